import sys

import numpy as np
import pytest
from scipy import ndimage

from sklearn_musc._colormap import jet_table
from sklearn_musc.plotting import (
    anomaly_map_rgb,
    normalization_bounds,
    overlay_anomaly_map,
    plot_anomaly_grid,
)

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

JET = matplotlib.colormaps["jet"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _colour(cmap_value):
    return np.rint(np.asarray(JET(cmap_value))[:3] * 255).astype(int).tolist()


def _black(h=8, w=8):
    return np.zeros((h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- anomaly_map_rgb


def test_rgb_shape_dtype_and_alpha():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    amap = rng.random((5, 6))
    out = anomaly_map_rgb(image, amap, vmin=0, vmax=1)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(anomaly_map_rgb(image, amap, 0, 1, alpha=0.0), image)
    # float images in [0, 1] give the same result as uint8 ones
    np.testing.assert_array_equal(anomaly_map_rgb(image / 255.0, amap, 0, 1), out)
    # alpha blends linearly between the image and the colours
    full = anomaly_map_rgb(image, amap, 0, 1, alpha=1.0).astype(float)
    expected = 0.5 * image + 0.5 * full
    assert np.abs(out - expected).max() <= 1.0


def test_rgb_extreme_colours():
    amap = np.array([[0.0, 1.0], [0.5, 2.0]])
    out = anomaly_map_rgb(_black(2, 2), amap, vmin=0.0, vmax=1.0, alpha=1.0)
    assert out[0, 0].tolist() == _colour(0.0)
    assert out[0, 1].tolist() == _colour(1.0)
    assert out[1, 1].tolist() == _colour(1.0)  # clipped above vmax
    assert out[1, 0].tolist() == _colour(0.5)


def test_batch_and_image_normalisation():
    # two maps with different ranges, holding the same value 1.0 at the same place
    a = np.array([[0.0, 1.0], [0.5, 0.2]])
    b = np.array([[0.0, 1.0], [4.0, 2.0]])
    batch = normalization_bounds([a, b], "batch")
    np.testing.assert_array_equal(batch, [[0.0, 4.0], [0.0, 4.0]])
    image = normalization_bounds([a, b], "image")
    np.testing.assert_array_equal(image, [[0.0, 1.0], [0.0, 4.0]])
    np.testing.assert_array_equal(normalization_bounds([a, b], (1, 3)), [[1, 3], [1, 3]])

    def rgb(m, bounds):
        return anomaly_map_rgb(_black(2, 2), m, *bounds, alpha=1.0)

    # batch: one scale, so the same value has the same colour in both maps
    ra, rb = rgb(a, batch[0]), rgb(b, batch[1])
    assert ra[0, 1].tolist() == rb[0, 1].tolist() == _colour(0.25)
    assert rb[1, 0].tolist() == _colour(1.0)
    assert ra.reshape(-1, 3).tolist().count(_colour(1.0)) == 0  # a never reaches the top
    # image: each map spans the whole colormap, from its own min to its own max
    ra, rb = rgb(a, image[0]), rgb(b, image[1])
    assert ra[0, 0].tolist() == rb[0, 0].tolist() == _colour(0.0)
    assert ra[0, 1].tolist() == _colour(1.0)  # a's max
    assert rb[1, 0].tolist() == _colour(1.0)  # b's max
    assert ra[0, 1].tolist() != rb[0, 1].tolist()  # the same value, different colours


def test_rgb_map_resized_bilinearly():
    ramp = np.array([[0.0, 1.0], [0.0, 1.0]])
    out = anomaly_map_rgb(_black(8, 16), ramp, 0, 1, alpha=1.0)
    assert out.shape == (8, 16, 3)
    # bilinear: many colours along a row, and the same in every row
    assert len({tuple(c) for c in out[0]}) > 4
    assert (out == out[:1]).all()
    assert out[0, 0].tolist() == _colour(0.0) and out[0, -1].tolist() == _colour(1.0)


def test_rgb_mask_outline():
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[8:18, 10:20] = 1
    out = anomaly_map_rgb(_black(32, 32), np.zeros((4, 4)), 0, 1, alpha=0.0, mask=mask,
                          outline_color=(0, 255, 0))
    green = (out == [0, 255, 0]).all(axis=-1)
    ring = mask.astype(bool) & ~ndimage.binary_erosion(mask)
    np.testing.assert_array_equal(green, ring)
    assert green.sum() == 4 * 10 - 4
    assert (out[~green] == 0).all()
    # a smaller mask is resized to the image (nearest); a wider outline covers more
    small = mask[::2, ::2]
    out = anomaly_map_rgb(_black(32, 32), np.zeros((4, 4)), 0, 1, alpha=0.0, mask=small,
                          outline_color=(0, 255, 0), outline_width=2)
    green = (out == [0, 255, 0]).all(axis=-1)
    assert green[8, 10] and green[9, 11] and not green[12, 14] and not green[0, 0]
    # a mask touching the image border: the border is not part of the outline
    edge = np.zeros((8, 8), dtype=np.uint8)
    edge[:, :4] = 1
    out = anomaly_map_rgb(_black(), np.zeros((8, 8)), 0, 1, alpha=0.0, mask=edge)
    white = (out == 255).all(axis=-1)
    assert white[:, 3].all() and white.sum() == 8
    # an empty mask draws nothing
    out = anomaly_map_rgb(_black(), np.zeros((8, 8)), 0, 1, alpha=0.0, mask=np.zeros((8, 8)))
    assert not out.any()


def test_rgb_inputs():
    amap = np.ones((4, 4))
    grey = np.full((8, 8), 100, dtype=np.uint8)
    assert anomaly_map_rgb(grey, amap, 0, 1, alpha=0.0)[0, 0].tolist() == [100] * 3
    rgba = np.full((8, 8, 4), 50, dtype=np.uint8)
    assert anomaly_map_rgb(rgba, amap, 0, 1, alpha=0.0).shape == (8, 8, 3)
    # a flat range: values above it get the last colour, the others the first
    out = anomaly_map_rgb(_black(1, 2), np.array([[1.0, 2.0]]), 1.0, 1.0, alpha=1.0)
    assert out[0].tolist() == [_colour(0.0), _colour(1.0)]
    # a colormap given as a lookup table
    lut = np.array([[0, 0, 0], [255, 255, 255]], dtype=np.uint8)
    out = anomaly_map_rgb(_black(1, 2), np.array([[0.0, 1.0]]), 0, 1, alpha=1.0, cmap=lut)
    assert out[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    out = anomaly_map_rgb(_black(1, 2), np.array([[0.0, 1.0]]), 0, 1, alpha=1.0,
                          cmap="viridis")
    assert out[0, 0].tolist() == np.rint(
        np.asarray(matplotlib.colormaps["viridis"](0.0))[:3] * 255).astype(int).tolist()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(vmin=1.0, vmax=0.0), "vmax"),
        (dict(alpha=1.5), "alpha"),
        (dict(image=np.full((8, 8, 3), 2.0)), r"\[0, 1\]"),
        (dict(image=np.zeros((8, 8, 5))), "shape"),
        (dict(anomaly_map=np.zeros((2, 4, 4))), "shape"),
        (dict(anomaly_map=np.full((4, 4), np.nan)), "NaN"),
        (dict(mask=np.ones((8, 8)), outline_width=0), "outline_width"),
        (dict(cmap=np.zeros((4, 2))), "colormap"),
    ],
)
def test_rgb_errors(kwargs, match):
    args = dict(image=_black(), anomaly_map=np.zeros((4, 4)), vmin=0.0, vmax=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        anomaly_map_rgb(**args)


def test_builtin_jet_matches_matplotlib():
    np.testing.assert_allclose(jet_table(256), JET(np.linspace(0, 1, 256))[:, :3], atol=1e-6)


def test_without_matplotlib(monkeypatch):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    amap = rng.random((4, 4))
    mask = np.zeros((16, 16))
    mask[4:9, 4:9] = 1
    expected = anomaly_map_rgb(image, amap, 0, 1, mask=mask)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    out = anomaly_map_rgb(image, amap, 0, 1, mask=mask)
    assert np.abs(out.astype(int) - expected).max() <= 1
    with pytest.raises(ImportError, match=r"pip install sklearn-musc\[examples\]"):
        anomaly_map_rgb(image, amap, 0, 1, cmap="viridis")
    with pytest.raises(ImportError, match=r"pip install sklearn-musc\[examples\]"):
        overlay_anomaly_map(image, amap)
    with pytest.raises(ImportError, match=r"pip install sklearn-musc\[examples\]"):
        plot_anomaly_grid([image], [amap])


# --------------------------------------------------------------------------- overlay


def _heat(ax):
    images = ax.get_images()
    assert len(images) == 2
    return images[1]


def test_overlay_anomaly_map():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(24, 20, 3), dtype=np.uint8)
    amap = rng.random((6, 5)) * 3 + 1
    mask = np.zeros((24, 20), dtype=bool)
    mask[5:12, 6:14] = True
    fig, ax = plt.subplots()
    returned = overlay_anomaly_map(image, amap, mask=mask, ax=ax)
    assert returned is ax
    heat = _heat(ax)
    assert heat.get_array().shape == (24, 20)  # resized to the image
    np.testing.assert_allclose(heat.get_clim(), (amap.min(), amap.max()))
    assert heat.get_alpha() == 0.5
    assert len(ax.collections) == 1  # the mask's contour
    fig.canvas.draw()

    plt.figure()
    ax2 = overlay_anomaly_map(image, amap, normalize=(0, 10), alpha=0.3, cmap="viridis",
                              colorbar=True)
    assert ax2 is plt.gca()
    heat = _heat(ax2)
    assert heat.get_clim() == (0, 10) and heat.get_alpha() == 0.3
    assert heat.get_cmap().name == "viridis"
    assert not ax2.collections
    # "batch" is the map's own range for a single map; flat maps and empty masks are fine
    _, ax3 = plt.subplots()
    overlay_anomaly_map(image / 255.0, np.ones((3, 3)), mask=np.zeros((24, 20)),
                        normalize="batch", ax=ax3)
    assert not ax3.collections
    ax3.figure.canvas.draw()
    with pytest.raises(ValueError, match="normalize"):
        overlay_anomaly_map(image, amap, normalize="global")


# --------------------------------------------------------------------------- grid


def _grid_data(n=5):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8)
    maps = [rng.random((4, 4)) * (i + 1) for i in range(n)]
    masks = np.zeros((n, 16, 16), dtype=np.uint8)
    masks[1, 3:9, 3:9] = 1
    masks[3, 8:, 8:] = 1
    labels = np.array([0, 1, 0, 1, 0])[:n]
    scores = np.array([m.max() for m in maps])
    return images, maps, masks, labels, scores


def test_plot_anomaly_grid_batch():
    images, maps, masks, labels, scores = _grid_data()
    fig = plot_anomaly_grid(images, maps, masks=masks, scores=scores, labels=labels,
                            titles=[f"img{i}" for i in range(5)], n_cols=3)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) == 5  # 2 x 3 grid, the empty panel removed
    lo = min(m.min() for m in maps)
    hi = max(m.max() for m in maps)
    for ax in fig.axes:
        np.testing.assert_allclose(_heat(ax).get_clim(), (lo, hi))
    title = fig.axes[1].get_title()
    assert "img1" in title and f"score {scores[1]:.3g}" in title and "label 1" in title
    assert fig.axes[1].title.get_color() == "tab:red"
    assert fig.axes[0].title.get_color() == "black"
    assert [len(ax.collections) for ax in fig.axes] == [0, 1, 0, 1, 0]
    fig.canvas.draw()


def test_plot_anomaly_grid_image_and_fixed():
    images, maps, _, _, _ = _grid_data()
    fig = plot_anomaly_grid(list(images), maps, normalize="image", n_cols=10, figsize=(8, 2))
    assert len(fig.axes) == 5
    assert tuple(fig.get_size_inches()) == (8, 2)
    for ax, m in zip(fig.axes, maps):
        np.testing.assert_allclose(_heat(ax).get_clim(), (m.min(), m.max()))
        assert ax.get_title() == ""
    fig = plot_anomaly_grid(images[:2], np.stack(maps[:2]), normalize=(0.0, 2.0))
    assert [_heat(ax).get_clim() for ax in fig.axes] == [(0.0, 2.0)] * 2


def test_plot_anomaly_grid_errors():
    images, maps, _, _, _ = _grid_data()
    with pytest.raises(ValueError, match="anomaly_maps has 4 entries, expected 5"):
        plot_anomaly_grid(images, maps[:4])
    with pytest.raises(ValueError, match="scores"):
        plot_anomaly_grid(images, maps, scores=[1.0, 2.0])
    with pytest.raises(ValueError, match="n_cols"):
        plot_anomaly_grid(images, maps, n_cols=0)
    with pytest.raises(ValueError, match="no image"):
        plot_anomaly_grid([], [])
    with pytest.raises(ValueError, match="normalize"):
        normalization_bounds(maps, "all")
    with pytest.raises(ValueError, match="vmax"):
        normalization_bounds(maps, (2, 1))


def test_bands_of_rows_give_the_same_overlay(monkeypatch):
    """Colouring, blending and the mask's outline in bands of rows equal doing it at once."""
    from sklearn_musc import plotting

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(40, 24, 3), dtype=np.uint8)
    amap = rng.random((7, 5))
    mask = np.zeros((40, 24), dtype=bool)
    mask[5:33, 3:20] = True
    mask[12:14, 8:30] = False
    for kwargs in (dict(), dict(input_size=(16, 16)), dict(outline_width=3)):
        whole = anomaly_map_rgb(image, amap, 0.2, 0.8, mask=mask, **kwargs)
        monkeypatch.setattr(plotting, "_BAND_PIXELS", 24 * 2)  # bands of 2 rows
        banded = anomaly_map_rgb(image, amap, 0.2, 0.8, mask=mask, **kwargs)
        monkeypatch.undo()
        np.testing.assert_array_equal(banded, whole)
