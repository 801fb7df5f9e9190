"""Anomaly maps drawn over their images.

* :func:`anomaly_map_rgb` blends an image and its anomaly map into an RGB
  array (and draws the outline of a ground-truth mask in), with no figure:
  the one overlay renderer, which the command line's overlay PNGs use too.
* :func:`overlay_anomaly_map` draws one overlay on a matplotlib Axes.
* :func:`plot_anomaly_grid` draws a whole batch as a grid of overlays.
* :func:`normalization_bounds` gives the (vmin, vmax) of each map for the
  ``"batch"`` and ``"image"`` normalisations.

matplotlib is an optional dependency (``pip install sklearn-musc[examples]``),
imported only inside the functions that need it. :func:`anomaly_map_rgb` does
not need it for ``cmap="jet"``: ``"jet"`` is always the built-in copy of
matplotlib's ``jet`` (``sklearn_musc._colormap``, the same piecewise-linear
segments), so the same inputs give the same overlay bytes with or without
matplotlib; other colormap names need matplotlib, and a colormap may also be
given as an (n_colors, 3 or 4) array.
"""

from __future__ import annotations

import numbers
import os

import numpy as np
from PIL import Image
from scipy import ndimage

from ._colormap import INSTALL_HINT, lookup_table, unit_scale
from ._validation import check_size
from .geometry import masks_to_original, paste_to_original, resize_map, resize_mask
from .images import load_image, read_rgb

__all__ = [
    "anomaly_map_rgb",
    "normalization_bounds",
    "overlay_anomaly_map",
    "plot_anomaly_grid",
]


def _import_matplotlib(what):
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(
            f"{what} needs matplotlib, an optional dependency of sklearn-musc; install it "
            f"with: {INSTALL_HINT}"
        ) from exc
    return matplotlib


def _import_pyplot(what):
    _import_matplotlib(what)
    import matplotlib.pyplot as plt

    return plt


def _as_map(anomaly_map):
    anomaly_map = np.asarray(anomaly_map, dtype=np.float64)
    if anomaly_map.ndim == 3 and anomaly_map.shape[0] == 1:
        anomaly_map = anomaly_map[0]
    if anomaly_map.ndim != 2:
        raise ValueError(f"an anomaly map must have shape (h, w), got {anomaly_map.shape}")
    if not np.all(np.isfinite(anomaly_map)):
        raise ValueError("the anomaly map holds NaN or infinite values")
    return anomaly_map


def _check_bounds(vmin, vmax):
    vmin, vmax = float(vmin), float(vmax)
    if not (np.isfinite(vmin) and np.isfinite(vmax)):
        raise ValueError(f"vmin and vmax must be finite, got {vmin}, {vmax}")
    if vmax < vmin:
        raise ValueError(f"vmax must be at least vmin, got vmin={vmin}, vmax={vmax}")
    return vmin, vmax


def _check_alpha(alpha):
    if not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    return float(alpha)


def normalization_bounds(anomaly_maps, normalize="batch"):
    """The (vmin, vmax) used to colour each anomaly map.

    Parameters
    ----------
    anomaly_maps : sequence of array-like of shape (h, w), or ndarray (n, h, w)
        The maps of a batch (they may differ in size).
    normalize : {"batch", "image"} or (float, float), default="batch"
        ``"batch"``: one range for all maps, their overall min and max, so
        colours compare between images. ``"image"``: each map's own min and
        max, so every map spans the whole colormap. A pair: that fixed range.

    Returns
    -------
    bounds : ndarray of shape (n, 2)
        ``bounds[i] = (vmin, vmax)`` of map ``i``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_musc.plotting import normalization_bounds
    >>> maps = [np.array([[0.0, 1.0]]), np.array([[2.0, 4.0]])]
    >>> normalization_bounds(maps, "batch").tolist()
    [[0.0, 4.0], [0.0, 4.0]]
    >>> normalization_bounds(maps, "image").tolist()
    [[0.0, 1.0], [2.0, 4.0]]
    """
    maps = [_as_map(m) for m in anomaly_maps]
    if not maps:
        raise ValueError("anomaly_maps holds no map")
    if isinstance(normalize, str):
        if normalize == "batch":
            lo = min(m.min() for m in maps)
            hi = max(m.max() for m in maps)
            return np.tile([lo, hi], (len(maps), 1)).astype(np.float64)
        if normalize == "image":
            return np.array([[m.min(), m.max()] for m in maps], dtype=np.float64)
        raise ValueError(f"normalize must be 'batch', 'image' or (vmin, vmax), got {normalize!r}")
    try:
        vmin, vmax = normalize
    except (TypeError, ValueError):
        raise ValueError(
            f"normalize must be 'batch', 'image' or (vmin, vmax), got {normalize!r}"
        ) from None
    vmin, vmax = _check_bounds(vmin, vmax)
    return np.tile([vmin, vmax], (len(maps), 1)).astype(np.float64)


_BAND_PIXELS = 1 << 18  # pixels coloured and blended at once: bounds the temporary memory of a large photo


def _outline_rows(mask, width, y0, y1):
    """Inner boundary pixels of a binary mask in rows ``y0:y1`` (the image border is not a boundary).

    The erosion reaches ``width`` pixels, so rows ``y0 - width : y1 + width``
    give the band's outline exactly; a large mask never needs a full-size
    temporary.
    """
    lo, hi = max(0, y0 - width), min(mask.shape[0], y1 + width)
    part = mask[lo:hi]
    if not part.any():
        return np.zeros((y1 - y0, mask.shape[1]), dtype=bool)
    eroded = ndimage.binary_erosion(part, iterations=width, border_value=1)
    return (part & ~eroded)[y0 - lo : y1 - lo]


def _place_mask(mask, size, input_size, crop_mode="auto"):
    """A mask at the image's size: as it is, put back from the model input, or resized (nearest)."""
    mask = np.asarray(mask)
    if mask.ndim == 2 and mask.shape != tuple(size) and input_size is not None:
        return masks_to_original([mask], [size], input_size, crop_mode=crop_mode)[0]
    return resize_mask(mask, size)


def _image_rows(image):
    """The decoded image's (height, width) and a function giving rows ``y0:y1`` as float64 in [0, 1].

    Files and PIL images are decoded as the model decodes them
    (:func:`~sklearn_musc.images.load_image`) and stay 8-bit until a band
    is blended; arrays are read as :func:`~sklearn_musc.images.read_rgb`
    reads them, in float64.
    """
    if isinstance(image, (str, os.PathLike, Image.Image)):
        decoded = load_image(image)[0]
    else:
        decoded = read_rgb(image, dtype=np.float64)
    if isinstance(decoded, Image.Image):
        width = decoded.width

        def rows(y0, y1):
            return np.asarray(decoded.crop((0, y0, width, y1)), dtype=np.float64) / 255.0

        return (decoded.height, width), rows
    return decoded.shape[:2], lambda y0, y1: decoded[y0:y1].astype(np.float64, copy=False)


def anomaly_map_rgb(
    image,
    anomaly_map,
    vmin,
    vmax,
    alpha=0.5,
    cmap="jet",
    mask=None,
    outline_color=(255, 255, 255),
    outline_width=1,
    input_size=None,
    crop_mode="auto",
):
    """An image with its anomaly map blended on top, as an RGB array.

    The one overlay renderer of the library: the command line's
    ``overlays/*.png`` are drawn by it. The map is put on the image
    (bilinear: stretched over the whole image, or with ``input_size`` placed
    where the model saw it), scaled by ``(vmin, vmax)`` (values outside are
    clipped), coloured with ``cmap`` and blended:
    ``(1 - alpha) * image + alpha * colours``. The outline of ``mask`` (its
    boundary pixels, found as the mask minus its binary erosion) is then
    painted in ``outline_color``. The image is coloured and blended in bands
    of rows and the resized map is float32, so a large photo needs little
    more memory than the image and the output themselves.

    Parameters
    ----------
    image : array-like of shape (H, W, 3), (H, W, 4) or (H, W), a PIL image or a path
        uint8, uint16, bool, or float in [0, 1]. Read as the model reads it
        (:func:`~sklearn_musc.images.load_image`): alpha channels are
        dropped, grey is repeated, the EXIF orientation is applied.
    anomaly_map : array-like of shape (h, w)
        The anomaly scores of the pixels.
    vmin, vmax : float
        The scores given the first and the last colour of ``cmap`` (see
        :func:`normalization_bounds`). With ``vmin == vmax``, scores above it
        get the last colour and the others the first.
    alpha : float in [0, 1], default=0.5
        Weight of the heat map.
    cmap : str, matplotlib Colormap or array of shape (n_colors, 3 or 4), default="jet"
        The colormap. ``"jet"`` works without matplotlib (a built-in copy),
        so a jet overlay is the same bytes with or without matplotlib; other
        names need it. An array is used as a lookup table (uint8, or float in
        [0, 1]).
    mask : array-like of shape (h', w'), optional
        A ground-truth mask (nonzero = anomalous); its outline is drawn in.
        A mask of another size than the image is resized to it (nearest
        neighbour), or, with ``input_size``, put back from the model input
        as :func:`~sklearn_musc.geometry.masks_to_original` does.
    outline_color : (int, int, int), default=(255, 255, 255)
        The RGB colour of the outline.
    outline_width : int, default=1
        The outline's width in pixels, inside the mask.
    input_size : (int, int), optional
        The model input the map covers (``MutualScoringDetector.input_size_``):
        the map is then placed on the region of the image the model saw and
        the borders it did not see get the map's minimum, as
        :func:`~sklearn_musc.geometry.maps_to_original` places maps. By
        default the map covers the whole image.
    crop_mode : {"auto", "center", "border", "squash"}, default="auto"
        With ``input_size``: how the image was fitted to the model input
        (``ViTPatchTransformer(crop_mode=...)``, the detector's
        ``crop_mode_``).

    Returns
    -------
    overlay : ndarray of shape (H, W, 3), dtype uint8

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_musc.plotting import anomaly_map_rgb
    >>> image = np.zeros((8, 8, 3), dtype=np.uint8)
    >>> amap = np.zeros((4, 4)); amap[1:3, 1:3] = 1.0
    >>> out = anomaly_map_rgb(image, amap, vmin=0.0, vmax=1.0, alpha=1.0)
    >>> out.shape, out.dtype
    ((8, 8, 3), dtype('uint8'))
    >>> out[0, 0].tolist(), out[4, 4].tolist()    # jet's first and last colours
    ([0, 0, 128], [128, 0, 0])
    """
    (height, width), rows = _image_rows(image)
    size = (height, width)
    values = _as_map(anomaly_map)
    vmin, vmax = _check_bounds(vmin, vmax)
    alpha = _check_alpha(alpha)
    lut = lookup_table(cmap)
    colour = None
    if mask is not None:
        outline_width = int(outline_width)
        if outline_width < 1:
            raise ValueError(f"outline_width must be at least 1, got {outline_width!r}")
        colour = np.asarray(outline_color)
        if colour.shape != (3,):
            raise ValueError(f"outline_color must be an (r, g, b) triple, got {outline_color!r}")
        colour = np.clip(colour, 0, 255).astype(np.uint8)
        mask = _place_mask(mask, size, input_size, crop_mode)
    # the map placed on the image as a float32 PIL image: 4 bytes a pixel, no float64 copy
    if input_size is not None:
        placed = paste_to_original(Image.fromarray(values.astype(np.float32)), size,
                                   check_size(input_size, "input_size"), Image.BILINEAR, "min", crop_mode)
    elif values.shape != size:
        placed = Image.fromarray(values.astype(np.float32)).resize((width, height), Image.BILINEAR)
    else:
        placed = None  # already at the image's size: the values themselves
    n_colors = len(lut)
    out = np.empty((height, width, 3), dtype=np.uint8)
    step = max(1, _BAND_PIXELS // width)
    for y0 in range(0, height, step):
        y1 = min(height, y0 + step)
        band = values[y0:y1] if placed is None else np.asarray(placed.crop((0, y0, width, y1)), np.float64)
        index = np.minimum((unit_scale(band, vmin, vmax) * n_colors).astype(np.intp), n_colors - 1)
        blended = (1.0 - alpha) * rows(y0, y1) + alpha * lut[index]
        out[y0:y1] = np.clip(np.rint(blended * 255.0), 0, 255)
        if mask is not None:
            out[y0:y1][_outline_rows(mask, outline_width, y0, y1)] = colour
    return out


def overlay_anomaly_map(
    image,
    anomaly_map,
    mask=None,
    normalize="image",
    alpha=0.5,
    cmap="jet",
    ax=None,
    outline_color="white",
    colorbar=False,
):
    """Draw an image with its anomaly map on top, and a mask's outline, on an Axes.

    Parameters
    ----------
    image : array-like of shape (H, W, 3), (H, W, 4) or (H, W), a PIL image or a path
        As for :func:`anomaly_map_rgb`.
    anomaly_map : array-like of shape (h, w)
        The anomaly scores; resized to the image (bilinear) when the sizes
        differ.
    mask : array-like of shape (h', w'), optional
        A ground-truth mask (nonzero = anomalous), drawn as a contour.
    normalize : {"image", "batch"} or (float, float), default="image"
        ``"image"`` (or ``"batch"``, the same for a single map) spans the
        colormap from the map's min to its max; a pair ``(vmin, vmax)`` fixes
        the range, e.g. to compare images (see :func:`normalization_bounds`).
    alpha : float in [0, 1], default=0.5
        Opacity of the heat map.
    cmap : str or matplotlib Colormap, default="jet"
        The colormap of the heat map.
    ax : matplotlib Axes, optional
        Where to draw; by default the current Axes.
    outline_color : matplotlib colour, default="white"
        The colour of the mask's contour.
    colorbar : bool, default=False
        Whether to add a colorbar for the map.

    Returns
    -------
    ax : matplotlib Axes

    Raises
    ------
    ImportError
        If matplotlib is not installed (``pip install sklearn-musc[examples]``).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> from sklearn_musc.datasets import make_synthetic_defects
    >>> from sklearn_musc.plotting import overlay_anomaly_map
    >>> data = make_synthetic_defects(n_images=2, n_anomalous=1, image_size=64,
    ...                               random_state=0)
    >>> i = int(data.labels.argmax())
    >>> ax = overlay_anomaly_map(data.images[i], data.masks[i][::4, ::4], mask=data.masks[i])
    >>> plt.close("all")
    """
    plt = _import_pyplot("overlay_anomaly_map")
    rgb = read_rgb(image, dtype=np.float64)  # decoded as the model decodes it
    size = rgb.shape[:2]
    values = resize_map(_as_map(anomaly_map), size)
    if isinstance(normalize, str) and normalize in ("image", "batch"):
        vmin, vmax = normalization_bounds([anomaly_map], "image")[0]
    else:
        vmin, vmax = normalization_bounds([anomaly_map], normalize)[0]
    alpha = _check_alpha(alpha)
    if ax is None:
        ax = plt.gca()
    ax.imshow(rgb, interpolation="nearest")
    if vmax == vmin:
        vmax = vmin + 1e-12  # a flat map: avoid matplotlib's singular-range warning
    heat = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha,
                     interpolation="nearest")
    if mask is not None:
        binary = resize_mask(mask, size)
        if binary.any() and not binary.all():
            ax.contour(binary.astype(np.float64), levels=[0.5], colors=[outline_color],
                       linewidths=1.0)
    if colorbar:
        ax.figure.colorbar(heat, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _as_list(values, n, name):
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries, expected {n} (one per image)")
    return values


def plot_anomaly_grid(
    images,
    anomaly_maps,
    masks=None,
    scores=None,
    labels=None,
    titles=None,
    normalize="batch",
    n_cols=6,
    figsize=None,
    alpha=0.5,
    cmap="jet",
):
    """A grid of anomaly-map overlays, one panel per image of a batch.

    Parameters
    ----------
    images : sequence of images (arrays, PIL images or paths) or ndarray (n, H, W, 3)
        The images, one per panel.
    anomaly_maps : sequence of array-like (h, w) or ndarray (n, h, w)
        One map per image, resized to its image for display.
    masks : sequence of array-like or ndarray (n, H, W), optional
        Ground-truth masks, drawn as contours (None entries are skipped).
    scores : array-like of shape (n,), optional
        Image scores, written in the titles.
    labels : array-like of shape (n,), optional
        Labels (1 = anomalous), written in the titles; anomalous ones in red.
    titles : sequence of str, optional
        A first title line per image (e.g. a file name or defect type).
    normalize : {"batch", "image"} or (float, float), default="batch"
        ``"batch"``: one colour range, the min and max over all maps (colours
        compare between panels); ``"image"``: each map by its own min and max;
        a pair: that fixed range. See :func:`normalization_bounds`.
    n_cols : int, default=6
        Panels per row.
    figsize : (float, float), optional
        Default: 2.5 inches per panel.
    alpha : float in [0, 1], default=0.5
        Opacity of the heat maps.
    cmap : str or matplotlib Colormap, default="jet"
        The colormap of the heat maps.

    Returns
    -------
    fig : matplotlib Figure

    Raises
    ------
    ImportError
        If matplotlib is not installed (``pip install sklearn-musc[examples]``).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> import numpy as np
    >>> from sklearn_musc.datasets import make_synthetic_defects
    >>> from sklearn_musc.plotting import plot_anomaly_grid
    >>> data = make_synthetic_defects(n_images=4, n_anomalous=1, image_size=32,
    ...                               random_state=0)
    >>> maps = data.masks.astype(float)
    >>> fig = plot_anomaly_grid(data.images, maps, masks=data.masks,
    ...                         scores=maps.max(axis=(1, 2)), labels=data.labels, n_cols=2)
    >>> len(fig.axes)
    4
    >>> plt.close(fig)
    """
    plt = _import_pyplot("plot_anomaly_grid")
    images = list(images)
    n = len(images)
    if n == 0:
        raise ValueError("images holds no image")
    anomaly_maps = _as_list(anomaly_maps, n, "anomaly_maps")
    masks = _as_list(masks, n, "masks")
    scores = _as_list(None if scores is None else np.ravel(scores), n, "scores")
    labels = _as_list(None if labels is None else np.ravel(labels), n, "labels")
    titles = _as_list(titles, n, "titles")
    if not isinstance(n_cols, numbers.Integral) or n_cols < 1:
        raise ValueError(f"n_cols must be a positive integer, got {n_cols!r}")
    bounds = normalization_bounds(anomaly_maps, normalize)
    n_cols = min(int(n_cols), n)
    n_rows = -(-n // n_cols)
    if figsize is None:
        figsize = (2.5 * n_cols, 2.5 * n_rows + 0.3)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=figsize, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            fig.delaxes(ax)
            continue
        overlay_anomaly_map(images[i], anomaly_maps[i], mask=masks[i],
                            normalize=tuple(bounds[i]), alpha=alpha, cmap=cmap, ax=ax)
        lines = []
        if titles[i] is not None:
            lines.append(str(titles[i]))
        details = []
        if scores[i] is not None:
            details.append(f"score {float(scores[i]):.3g}")
        if labels[i] is not None:
            details.append(f"label {int(labels[i])}")
        if details:
            lines.append(", ".join(details))
        if lines:
            anomalous = labels[i] is not None and int(labels[i]) == 1
            ax.set_title("\n".join(lines), fontsize=9, color="tab:red" if anomalous else "black")
    fig.tight_layout()
    return fig
