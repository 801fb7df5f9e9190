"""How images are fitted to the model input (issue #23): crop modes, their inverses, the warning, the CLI."""

import json
import pickle
import warnings

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone

from _helpers import SHARED
from _helpers import run_cli as run
from sklearn_musc import (LNAMDTransformer, MutualScoringDetector, ViTPatchTransformer, make_musc_pipeline,
                          maps_to_original, masks_to_input, masks_to_original)
from sklearn_musc.datasets import load_mvtec, save_synthetic_defects
from sklearn_musc.geometry import (CroppedImageWarning, crop_box, dropped_fraction, fit_geometry,
                                   paste_to_original, preprocess)
from sklearn_musc.images import load_image, read_rgb

MODES = ("center", "border", "squash")
WEIGHTS = SHARED / "weights" / "dinov2_vits14_imgfocus_fp16.safetensors"
TINY = dict(backbone="timm:vit_small_patch14_dinov2", pretrained=None, image_size=56,
            backbone_kwargs=dict(depth=2, embed_dim=32, num_heads=2), device="cpu", progress=False,
            random_state=0)
# (original size, input size, map size): wide, tall, maps at the patch grid, an image smaller than the map
# (antialiased), a non-square input, an image of the input's aspect ratio
CASES = [((30, 90), (16, 16), (16, 16)), ((90, 30), (16, 16), (4, 4)), ((7, 50), (16, 12), (16, 12)),
         ((200, 70), (14, 14), (14, 14)), ((5, 6), (28, 28), (28, 28)), ((33, 47), (12, 20), (6, 10)),
         ((40, 40), (16, 16), (16, 16))]


# ----------------------------------------------------------------- slow, obviously correct references (float64)


def placement(h, w, th, tw, mode):
    """(resized size, top-left of the resized image in the input), restated from the documented rules."""
    if mode == "squash":
        return (th, tw), (0, 0)
    if mode == "center":  # cover: the binding side becomes the input's, the other truncated; centre crop
        if th / h >= tw / w:
            rh, rw = th, max(tw, int(w * th / h))
        else:
            rh, rw = max(th, int(h * tw / w)), tw
        return (rh, rw), (-int(round((rh - th) / 2)), -int(round((rw - tw) / 2)))
    # border: fit inside, the other side rounded half up, centred (floor)
    if th / h <= tw / w:
        rh, rw = th, min(tw, max(1, int(np.floor(w * th / h + 0.5))))
    else:
        rh, rw = min(th, max(1, int(np.floor(h * tw / w + 0.5)))), tw
    return (rh, rw), ((th - rh) // 2, (tw - rw) // 2)


def _triangle_weights(t, support, n):
    """Taps and normalised triangle weights around ``t`` (map pixel units), edge-extended map of ``n``."""
    taps = np.arange(int(np.floor(t - support)) - 2, int(np.ceil(t + support)) + 3)
    weights = np.clip(1.0 - np.abs(taps + 0.5 - t) / support, 0.0, None)
    return np.clip(taps, 0, n - 1), weights / weights.sum()


def reference_map_to_original(m, original, input_size, mode, fill="min"):
    """Pixel by pixel: where did this original pixel's centre land in the input? Sample the map there."""
    m = np.asarray(m, np.float64)
    (h, w), (th, tw), (mh, mw) = original, input_size, m.shape
    (rh, rw), (dy, dx) = placement(h, w, th, tw, mode)
    out = np.full((h, w), np.nan)
    sy, sx = max(1.0, rh / h * mh / th), max(1.0, rw / w * mw / tw)  # antialiasing: map pixels per pixel
    for i in range(h):
        u = dy + (i + 0.5) * rh / h
        if not 0 <= u < th:
            continue
        for j in range(w):
            v = dx + (j + 0.5) * rw / w
            if not 0 <= v < tw:
                continue
            rows, wy = _triangle_weights(u * mh / th, sy, mh)
            cols, wx = _triangle_weights(v * mw / tw, sx, mw)
            out[i, j] = wy @ m[np.ix_(rows, cols)] @ wx
    seen = ~np.isnan(out)
    out[~seen] = out[seen].min() if fill == "min" else fill
    return out


def reference_mask_to_input(mask, input_size, mode):
    """Pixel by pixel: the nearest original pixel of each input pixel of the image, unmarked elsewhere.

    Returns the mask and the values it may also take: an input pixel whose centre falls exactly between
    two original pixels (a tie, which floating point breaks either way) may take either one's.
    """
    (h, w), (th, tw) = mask.shape, input_size
    (rh, rw), (dy, dx) = placement(h, w, th, tw, mode)
    out, other = np.zeros((th, tw), bool), np.zeros((th, tw), bool)
    for u in range(th):
        for v in range(tw):
            a, b = u - dy, v - dx
            if 0 <= a < rh and 0 <= b < rw:
                i, j = (2 * a + 1) * h // (2 * rh), (2 * b + 1) * w // (2 * rw)  # exact floor
                rows = {i, i - 1} if (2 * a + 1) * h % (2 * rh) == 0 and i > 0 else {i}
                cols = {j, j - 1} if (2 * b + 1) * w % (2 * rw) == 0 and j > 0 else {j}
                candidates = {bool(mask[y, x] > 0) for y in rows for x in cols}
                out[u, v], other[u, v] = min(candidates), max(candidates)
    return out, other


# ----------------------------------------------------------------- geometry


def test_fit_geometry_by_hand():
    assert fit_geometry((30, 60), (8, 8), "center") == ("center", (8, 16), (0, -4))
    assert fit_geometry((30, 60), (8, 8), "border") == ("border", (4, 8), (2, 0))
    assert fit_geometry((60, 30), (8, 8), "border") == ("border", (8, 4), (0, 2))
    assert fit_geometry((30, 60), (8, 8), "squash") == ("squash", (8, 8), (0, 0))
    assert fit_geometry((30, 90), (12, 12), "border") == ("border", (4, 12), (4, 0))
    # auto: the crop where it cuts no more than the resize's rounding, squash elsewhere
    assert fit_geometry((30, 30), (8, 8), "auto")[0] == "center"
    assert fit_geometry((198, 197), (224, 224), "auto") == fit_geometry((198, 197), (224, 224), "center")
    assert fit_geometry((30, 60), (8, 16), "auto")[0] == "center"  # the input's aspect ratio
    assert fit_geometry((30, 60), (8, 8), "auto")[0] == "squash"
    assert fit_geometry((30, 40), (16, 16), "auto")[0] == "squash"
    for size in [(30, 90), (90, 30), (7, 50), (200, 70), (33, 47)]:
        for mode in MODES:
            assert fit_geometry(size, (16, 12), mode)[1:] == placement(*size, 16, 12, mode), (size, mode)
    with pytest.raises(ValueError, match="^crop_mode must be one of 'auto', 'center', 'border', 'squash', "
                                         "got 'letterbox'$"):
        fit_geometry((3, 4), 8, "letterbox")


def test_auto_fits_mvtec_sized_images_exactly_as_the_paper(rng):
    image = load_image(rng.integers(0, 256, (198, 197, 3), dtype=np.uint8))[0]
    auto = preprocess(image, (224, 224), (0.4, 0.4, 0.4), (0.2, 0.2, 0.2))
    assert np.array_equal(auto.numpy(), preprocess(image, (224, 224), (0.4, 0.4, 0.4), (0.2, 0.2, 0.2), "center"))


def test_dropped_fraction_and_crop_box():
    assert dropped_fraction((30, 60), 8, "center") == 0.5
    assert dropped_fraction((30, 90), 8, "center") == pytest.approx(2 / 3)
    assert crop_box((30, 90), 8, "center") == (0, 30, 30, 60)
    for mode in ("auto", "border", "squash"):
        assert dropped_fraction((30, 90), 8, mode) == 0.0 and crop_box((30, 90), 8, mode) == (0, 30, 0, 90)
    # MVTec AD's 198 x 197 images at 224: the crop cuts one resized row, the rounding: not counted
    assert dropped_fraction((198, 197), 224, "center") == 0.0


# ----------------------------------------------------------------- each mode against the references


@pytest.mark.parametrize("mode", MODES)
def test_maps_to_original_matches_the_reference(mode, rng):
    for original, input_size, map_size in CASES:
        m = rng.random(map_size).astype(np.float32)
        got = maps_to_original([m], [original], input_size, crop_mode=mode)[0]
        want = reference_map_to_original(m, original, input_size, mode)
        assert got.shape == original and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{original} {input_size} {map_size}")
        const = maps_to_original([m], [original], input_size, crop_mode=mode, fill=-3.0)[0]
        np.testing.assert_allclose(const, reference_map_to_original(m, original, input_size, mode, -3.0),
                                   atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_masks_to_input_matches_the_reference(mode, rng):
    for original, input_size, _ in CASES:
        mask = rng.random(original) < 0.3
        got = masks_to_input([mask], input_size, crop_mode=mode)[0]
        low, high = reference_mask_to_input(mask, input_size, mode)
        assert np.all((got == low) | (got == high)), (original, input_size)  # exact, but for ties


@pytest.mark.parametrize("mode", MODES)
def test_masks_and_overlays_go_back_like_the_maps(mode, rng):
    for original, input_size, map_size in CASES:
        mask = np.zeros(map_size, bool)
        mask[map_size[0] // 4 : map_size[0] // 2 + 1, map_size[1] // 3 :] = True
        got = masks_to_original(mask[None], [original], input_size, crop_mode=mode)[0]
        want = reference_map_to_original(mask * 255.0, original, input_size, mode, fill=0.0)
        sure = np.abs(want - 127.5) > 2  # 8-bit rounding decides the rest
        np.testing.assert_array_equal(got[sure], want[sure] >= 128, err_msg=f"{original} {input_size}")
        index = (rng.random(map_size) * 255).astype(np.uint8)
        pasted = np.asarray(paste_to_original(Image.fromarray(index), original, input_size, Image.BILINEAR, "min",
                                              mode), dtype=np.float64)
        # 8 bits: PIL rounds after each of its two passes
        assert np.abs(pasted - reference_map_to_original(index, original, input_size, mode)).max() <= 1.5


@pytest.mark.parametrize("mode", MODES)
def test_maps_to_original_inverts_preprocess(mode):
    """A smooth image, fitted by ``preprocess``, read as a map and put back, is the image again."""
    yy, xx = np.mgrid[0:45, 0:130]
    smooth = (0.5 + 0.4 * np.sin(xx / 11.0) * np.cos(yy / 8.0)).astype(np.float32)
    x = preprocess(load_image(smooth, "s")[0], (32, 32), (0, 0, 0), (1, 1, 1), mode)
    back = maps_to_original(x[:1].numpy(), [(45, 130)], (32, 32), crop_mode=mode)[0]
    y0, y1, x0, x1 = crop_box((45, 130), (32, 32), mode)
    inner = (slice(y0 + 3, y1 - 3), slice(x0 + 3, x1 - 3))  # the resamplings' edge effects aside
    assert abs(np.mean(back[inner] - smooth[inner])) < 0.01
    assert np.abs(back[inner] - smooth[inner]).max() < 0.08
    if mode != "center":  # the whole image is seen: every pixel comes back, none is filled
        assert (y0, y1, x0, x1) == (0, 45, 0, 130)


def test_mixed_shapes_in_one_call(rng):
    sizes = [(30, 90), (40, 40), (90, 30)]
    maps = rng.random((3, 16, 16)).astype(np.float32)
    for mode in MODES + ("auto",):
        got = maps_to_original(maps, sizes, 16, crop_mode=mode)
        for m, size, g in zip(maps, sizes, got):
            resolved = fit_geometry(size, 16, mode)[0]
            np.testing.assert_allclose(g, reference_map_to_original(m, size, (16, 16), resolved), atol=1e-5)


def test_preprocess_border_is_the_mean_colour_and_the_image_sits_in_the_middle():
    rgb = np.full((10, 40, 3), 255, np.uint8)
    x = preprocess(load_image(rgb)[0], (16, 16), (0.2, 0.4, 0.6), (0.5, 0.5, 0.5), "border")
    # 10 x 40 fits as 4 x 16, rows 6..9
    assert np.all(x[:, :6].numpy() == 0) and np.all(x[:, 10:].numpy() == 0)
    np.testing.assert_allclose(x[:, 6:10].numpy(), ((1 - np.array([0.2, 0.4, 0.6])) / 0.5)[:, None, None]
                               * np.ones((3, 4, 16)), atol=1e-6)


# ----------------------------------------------------------------- the estimator


def _strips(rng, n=4, size=(28, 84)):
    return [rng.integers(0, 256, size + (3,), dtype=np.uint8) for _ in range(n)]


def test_crop_mode_is_a_plain_parameter():
    vit = ViTPatchTransformer(crop_mode="border")
    assert vit.get_params()["crop_mode"] == "border" and clone(vit).crop_mode == "border"
    assert ViTPatchTransformer().crop_mode == "auto"
    assert make_musc_pipeline("paper-mvtec")["vit"].crop_mode == "center"
    for bad in ("letterbox", None, "CENTER"):
        with pytest.raises(ValueError, match=r"^crop_mode must be one of 'auto', 'center', 'border', 'squash', "
                                             r"got .*$"):
            ViTPatchTransformer(crop_mode=bad, **{k: v for k, v in TINY.items()}).fit()


def test_a_transformer_pickled_before_crop_mode_keeps_the_centre_crop():
    vit = ViTPatchTransformer(crop_mode="squash")
    state = vit.__getstate__()
    del state["crop_mode"]
    old = ViTPatchTransformer.__new__(ViTPatchTransformer)
    old.__setstate__(state)
    assert old.crop_mode == "center" and pickle.loads(pickle.dumps(vit)).crop_mode == "squash"


def test_the_crop_warns_once_a_batch_with_the_share_cut_away(rng):
    images = _strips(rng, 2, (28, 56)) + _strips(rng, 1, (28, 28))  # two 1:2 images and one square
    vit = ViTPatchTransformer(crop_mode="center", batch_size=1, **TINY).fit()
    with pytest.warns(CroppedImageWarning) as caught:
        tokens = vit.transform(images)
    assert len(caught) == 1  # once for the batch, not once an image or a forward pass
    share = 2 * 0.5 * 28 * 56 / (2 * 28 * 56 + 28 * 28)  # 40.0 %
    assert f"{share:.1%}" == "40.0%" and "cuts away 40.0% of the pixels" in str(caught[0].message)
    assert "2 of 3 images, up to 50.0% of <array 0>" in str(caught[0].message)
    assert tokens.crop_mode == "center"
    for mode in ("auto", "border", "squash"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", CroppedImageWarning)
            tokens = ViTPatchTransformer(crop_mode=mode, **TINY).fit().transform(images)
        assert tokens.crop_mode == mode


def test_crop_mode_travels_to_the_detector_and_changes_the_tokens(rng):
    images = _strips(rng, 4)
    out = {}
    for mode in MODES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CroppedImageWarning)  # the centre crop's: tested above
            tokens = ViTPatchTransformer(crop_mode=mode, **TINY).fit().transform(images)
        feats = LNAMDTransformer(device="cpu", progress=False).fit_transform(tokens)
        assert feats.crop_mode == mode
        msm = MutualScoringDetector(device="cpu", progress=False)
        scores = msm.fit_transform(feats)
        assert msm.crop_mode_ == mode and scores.crop_mode == mode and scores.take([1, 0]).crop_mode == mode
        out[mode] = tokens.tokens
    assert not np.allclose(out["center"], out["border"]) and not np.allclose(out["border"], out["squash"])


@pytest.mark.shared_data
def test_a_defect_at_the_end_of_a_strip_is_found_by_default_and_warned_about_by_the_crop():
    """1:3 strips of good carpet; one strip has a planted defect in its last sixth, which a centre crop cuts."""
    data = load_mvtec(SHARED / "data" / "mvtec_ad_lowres", "carpet")
    good = [read_rgb(p) for p, label in zip(data.paths, data.labels) if label == 0]
    strips = [np.concatenate(good[3 * i : 3 * i + 3], axis=1) for i in range(8)]  # 8 strips of 197 x 594
    h, w = strips[0].shape[:2]
    defect = np.zeros((h, w), bool)
    defect[80:120, w - 60 : w - 20] = True  # in the last 60 px of the strip
    strips[5] = strips[5].copy()
    strips[5][defect] = (200, 30, 160)
    common = dict(vit__backbone="timm:vit_small_patch14_dinov2", vit__pretrained=str(WEIGHTS),
                  vit__image_size=224, vit__device="cpu", vit__progress=False, lnamd__device="cpu",
                  lnamd__progress=False, msm__device="cpu", msm__progress=False)
    pipe = make_musc_pipeline("default", **common)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CroppedImageWarning)  # the default sees everything: no warning
        pipe.fit(strips)
    msm = pipe["msm"]
    assert int(np.argmax(pipe["rscin"].anomaly_scores_)) == 5
    full = maps_to_original(msm.anomaly_maps_, msm.original_sizes_, msm.input_size_, crop_mode=msm.crop_mode_)[5]
    peak = np.unravel_index(full.argmax(), full.shape)
    # on the defect, give or take one patch (14 input pixels: 12 rows, 37 columns of the strip)
    near = np.zeros_like(defect)
    near[80 - 12 : 120 + 12, w - 60 - 37 : w - 20 + 37] = True
    assert near[peak], peak
    assert full[defect].max() > np.percentile(full, 99.5)

    crop = make_musc_pipeline("default", vit__crop_mode="center", **common)
    with pytest.warns(CroppedImageWarning, match="cuts away 66.8% of the pixels"):
        crop.fit(strips)
    msm = crop["msm"]
    full = maps_to_original(msm.anomaly_maps_, msm.original_sizes_, msm.input_size_, crop_mode="center")[5]
    assert full[defect].max() == full.min()  # never seen: filled with the map's minimum
    assert int(np.argmax(crop["rscin"].anomaly_scores_)) != 5


# ----------------------------------------------------------------- the command line


def test_cli_crop_mode_option_summary_and_report(tmp_path, capsys):
    save_synthetic_defects(tmp_path / "part", n_images=6, n_anomalous=1, image_size=64, kind="object",
                           random_state=0)
    folder = tmp_path / "part" / "test"
    for path in folder.rglob("*.png"):  # 64 x 128 strips
        image = np.asarray(Image.open(path).convert("RGB"))
        Image.fromarray(np.concatenate([image, image[:, ::-1]], axis=1)).save(path)
    small = ["--backbone", "timm:vit_small_patch14_dinov2", "--image-size", "56", "--device", "cpu",
             "--no-progress", "--pretrained", "none"]
    with pytest.warns(CroppedImageWarning, match="cuts away 50.0% of the pixels"):
        rc, _, err = run(capsys, "score", folder, "--out", tmp_path / "crop", "--crop-mode", "center", *small)
    assert rc == 0, err
    summary = json.loads((tmp_path / "crop" / "summary.json").read_text())
    assert summary["settings"]["crop_mode"] == "center"
    assert summary["crop"] == {"mode": "center", "images_cut": 6, "pixels_cut": 0.5}
    assert all(entry["cut_away"] == 0.5 for entry in summary["images"])
    report = (tmp_path / "crop" / "report.html").read_text()
    assert "cut away 50.0 % of the pixels of 6 of 6 images" in report
    entry = summary["images"][0]
    overlay = Image.open(tmp_path / "crop" / entry["overlay"])
    assert overlay.size == (128, 64)

    rc, _, err = run(capsys, "score", folder, "--out", tmp_path / "auto", *small)
    assert rc == 0, err
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert summary["settings"]["crop_mode"] == "auto"
    assert summary["crop"] == {"mode": "auto", "images_cut": 0, "pixels_cut": 0.0}
    assert "every pixel of every image was seen" in (tmp_path / "auto" / "report.html").read_text()

    with pytest.raises(SystemExit) as exc:
        run(capsys, "score", folder, "--out", tmp_path / "bad", "--crop-mode", "letterbox", *small)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--crop-mode: invalid choice: 'letterbox'" in err
