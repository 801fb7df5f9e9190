from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sklearn_musc.geometry import (
    crop_box,
    maps_to_original,
    masks_to_input,
    masks_to_original,
    preprocess,
    resize_crop_geometry,
)
from sklearn_musc.images import as_image_list, load_image, read_image_size
from sklearn_musc.datasets import load_masks, load_mvtec
from sklearn_musc.plotting import anomaly_map_rgb

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture
def rgb(rng):
    return rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)


def _as_array(image):
    """The loaded image as float RGB in [0, 1]."""
    if isinstance(image, Image.Image):
        assert image.mode == "RGB"
        return np.asarray(image, dtype=np.float32) / 255.0
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == 3
    return image


# ----------------------------------------------------------------- collections


def test_collections_and_sources(tmp_path, rgb):
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    items, sources = as_image_list([str(path), path, Image.fromarray(rgb), rgb])
    assert len(items) == 4
    assert sources == [str(path), str(path), "<PIL 2>", "<array 3>"]
    stack = np.stack([rgb, rgb])
    items, sources = as_image_list(stack)
    assert len(items) == 2 and sources == ["<array 0>", "<array 1>"]
    np.testing.assert_array_equal(items[1], rgb)
    items, _ = as_image_list(x for x in [rgb])  # any iterable
    assert len(items) == 1


@pytest.mark.parametrize(
    "X, error, match",
    [
        ([], ValueError, "no images"),
        ("image.png", TypeError, "wrap a single image in a list"),
        (Image.new("RGB", (4, 4)), TypeError, "wrap a single image"),
        (np.zeros((8, 8, 3), np.uint8), ValueError, r"\(n_images, height, width, channels\)"),
        ([np.zeros((4, 4)), 3], TypeError, "image 1 has unsupported type int"),
        (5, TypeError, "sequence of image paths"),
    ],
)
def test_bad_collections(X, error, match):
    with pytest.raises(error, match=match):
        as_image_list(X)


# ----------------------------------------------------------------- files


def test_paths_str_and_pathlib(tmp_path, rgb):
    path = tmp_path / "img.png"
    Image.fromarray(rgb).save(path)
    for item in (str(path), path):
        image, size = load_image(item, str(item))
        assert size == (30, 40)
        np.testing.assert_array_equal(np.asarray(image), rgb)


def test_exif_orientation_is_applied(tmp_path, rng):
    pixels = rng.integers(0, 256, size=(20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif)
    image, size = load_image(path, str(path))
    assert size == (40, 20)
    assert (image.height, image.width) == (40, 20)
    # A PIL image opened by the user is turned upright too.
    _, size = load_image(Image.open(path), "<PIL 0>")
    assert size == (40, 20)


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "missing.png"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(path, str(path))


def test_corrupt_file_names_it(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(ValueError, match=r"x\.png"):
        load_image(str(path), str(path))


def test_truncated_file_names_it(tmp_path, rgb):
    full = tmp_path / "full.png"
    Image.fromarray(rgb).save(full)
    path = tmp_path / "cut.png"
    path.write_bytes(full.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"cut\.png"):
        load_image(path, str(path))


def test_16bit_png_is_scaled_by_65535(tmp_path, rng):
    values = rng.integers(0, 65536, size=(12, 10), dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image, size = load_image(path, str(path))
    assert size == (12, 10)
    np.testing.assert_allclose(image, np.repeat(values[:, :, None] / 65535.0, 3, axis=2), atol=1e-7)


# ----------------------------------------------------------------- PIL modes


def test_pil_modes(rgb):
    base = Image.fromarray(rgb)
    gray = base.convert("L")
    out = _as_array(load_image(gray, "g")[0])
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])
    np.testing.assert_allclose(out[:, :, 0], np.asarray(gray) / 255.0, atol=1e-7)

    palette = base.convert("P")
    expected = np.asarray(palette.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(load_image(palette, "p")[0]), expected)
    palette.info["transparency"] = 0
    assert load_image(palette, "pt")[0].mode == "RGB"

    rgba = base.copy()
    rgba.putalpha(Image.new("L", base.size, 0))  # fully transparent: colours kept, alpha dropped
    np.testing.assert_array_equal(np.asarray(load_image(rgba, "a")[0]), rgb)
    la = gray.copy()
    la.putalpha(128)
    np.testing.assert_array_equal(np.asarray(load_image(la, "la")[0])[:, :, 1], np.asarray(gray))

    for mode in ("1", "CMYK", "YCbCr"):
        image, size = load_image(base.convert(mode), mode)
        assert image.mode == "RGB" and size == (30, 40)


def test_pil_16_and_32_bit_modes(rng):
    values = rng.integers(0, 65536, size=(6, 5), dtype=np.uint16)
    sixteen = Image.fromarray(values)
    assert sixteen.mode == "I;16"
    np.testing.assert_allclose(load_image(sixteen, "s")[0][:, :, 1], values / 65535.0, atol=1e-7)
    wide = Image.fromarray(values.astype(np.int32))
    assert wide.mode == "I"
    np.testing.assert_allclose(load_image(wide, "i")[0][:, :, 0], values / 65535.0, atol=1e-7)
    with pytest.raises(ValueError, match="<PIL 4>.*16-bit"):
        load_image(Image.fromarray(np.full((3, 3), 70000, np.int32)), "<PIL 4>")
    floats = rng.random((4, 3)).astype(np.float32)
    np.testing.assert_allclose(load_image(Image.fromarray(floats), "f")[0][:, :, 2], floats)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(Image.fromarray(floats * 3), "f")


# ----------------------------------------------------------------- arrays


def test_uint8_arrays(rgb):
    for array in (rgb, np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])):  # RGB, RGBA
        image, size = load_image(array, "<array 0>")
        assert size == (30, 40)
        np.testing.assert_array_equal(np.asarray(image), rgb)
    gray = rgb[:, :, 0]
    for array in (gray, gray[:, :, None]):
        image = np.asarray(load_image(array, "g")[0])
        np.testing.assert_array_equal(image, np.repeat(gray[:, :, None], 3, axis=2))


def test_uint16_and_float_arrays(rgb):
    deep = rgb.astype(np.uint16) * 257  # 255 -> 65535
    np.testing.assert_allclose(load_image(deep, "d")[0], rgb / 255.0, atol=1e-6)
    for dtype in (np.float16, np.float32, np.float64):
        array = (rgb / 255.0).astype(dtype)
        np.testing.assert_allclose(load_image(array, "f")[0], rgb / 255.0, atol=1e-3)
    gray = load_image((rgb[:, :, 0] / 255.0), "g")[0]
    assert gray.shape == (30, 40, 3)
    rgba = np.dstack([rgb / 255.0, np.ones((30, 40))])
    np.testing.assert_allclose(load_image(rgba, "a")[0], rgb / 255.0, atol=1e-6)


@pytest.mark.parametrize(
    "array, match",
    [
        (np.full((4, 4, 3), 1.5), r"<array 7>.*\[0, 1\]"),
        (np.full((4, 4, 3), -0.1), r"\[0, 1\]"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.zeros((4, 4, 3), np.int64), "dtype int64"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
    ],
)
def test_bad_arrays_name_the_image(array, match):
    with pytest.raises(ValueError, match=match):
        load_image(array, "<array 7>")


# ----------------------------------------------------------------- preprocessing


def test_geometry():
    assert resize_crop_geometry((30, 40), (16, 16)) == ((16, 21), (0, 2))
    assert resize_crop_geometry((40, 30), (16, 16)) == ((21, 16), (2, 0))
    assert resize_crop_geometry((50, 50), (16, 16)) == ((16, 16), (0, 0))
    # Non-square target: scale so the image covers it, then centre-crop.
    assert resize_crop_geometry((100, 100), (40, 20)) == ((40, 40), (0, 10))
    assert resize_crop_geometry((100, 300), (40, 20)) == ((40, 120), (0, 50))


def _normalise(image):
    return (np.asarray(image, np.float32) / 255.0 - np.float32(MEAN)) / np.float32(STD)


def test_preprocess_matches_a_plain_pil_reference(rgb):
    out = preprocess(Image.fromarray(rgb), (16, 16), MEAN, STD, "center")
    # Reference: shorter side to 16 (40 * 16 / 30 = 21.3 -> 21), bicubic, crop the centre.
    ref = Image.fromarray(rgb).resize((21, 16), Image.BICUBIC).crop((2, 0, 18, 16))
    ref = _normalise(ref)
    assert out.dtype == torch.float32 and out.shape == (3, 16, 16)
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), ref, atol=1e-6)


def test_preprocess_non_square_target(rgb):
    out = preprocess(Image.fromarray(rgb), (24, 12), MEAN, STD, "center")
    assert out.shape == (3, 24, 12)
    ref = Image.fromarray(rgb).resize((32, 24), Image.BICUBIC).crop((10, 0, 22, 24))
    ref = _normalise(ref)
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), ref, atol=1e-6)


def test_float_path_agrees_with_8_bit_path(rgb):
    for mode in ("center", "border", "squash"):
        eight = preprocess(load_image(rgb, "a")[0], (16, 16), MEAN, STD, mode)
        floats = preprocess(load_image(rgb / 255.0, "b")[0], (16, 16), MEAN, STD, mode)
        # PIL rounds 8-bit results to integers after each of its two resize passes.
        assert float((eight - floats).abs().max()) <= 1.5 / 255 / min(STD)


def test_preprocess_identity_size(rgb):
    out = preprocess(load_image(rgb, "a")[0], (30, 40), (0, 0, 0), (1, 1, 1))
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), rgb / 255.0, atol=1e-6)


# ----------------------------------------------------------------- maps and masks back on the images


def test_maps_to_original_places_the_crop_back():
    # 40 x 80 image, input 20: resized to 20 x 40, columns 10..30 kept,
    # i.e. original columns 20..60.
    ramp = np.tile(np.linspace(0.0, 1.0, 20, dtype=np.float32), (20, 1))
    out = maps_to_original(ramp[None], [(40, 80)], 20, crop_mode="center")[0]
    assert out.shape == (40, 80) and out.dtype == np.float32
    inner = out[:, 20:60]
    assert np.all(np.diff(inner, axis=1) >= 0)
    assert inner[:, 0].max() < 0.05 and inner[:, -1].min() > 0.95
    assert np.all(out[:, :20] == inner.min()) and np.all(out[:, 60:] == inner.min())
    edge = maps_to_original([ramp], [(40, 80)], (20, 20), crop_mode="center", fill="edge")[0]
    np.testing.assert_array_equal(edge[:, :20], np.repeat(edge[:, 20:21], 20, axis=1))
    np.testing.assert_array_equal(edge[:, 60:], np.repeat(edge[:, 59:60], 20, axis=1))
    const = maps_to_original([ramp], [(80, 40)], 20, crop_mode="center", fill=-1.0)[0]
    assert const.shape == (80, 40) and np.all(const[:20] == -1) and np.all(const[60:] == -1)


def test_maps_to_original_inverts_preprocessing(rng):
    yy, xx = np.mgrid[0:45, 0:90]
    smooth = (0.5 + 0.4 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.float32)
    size = (32, 24)
    x = preprocess(load_image(smooth, "s")[0], size, (0, 0, 0), (1, 1, 1), "center")
    back = maps_to_original(x[:1].numpy(), [(45, 90)], size, crop_mode="center")[0]
    (cols,) = np.nonzero(back[0] != back.min())  # the crop footprint
    lo, hi = cols.min() + 2, cols.max() - 2
    assert abs(np.mean(back[:, lo:hi] - smooth[:, lo:hi])) < 0.01
    assert np.abs(back[2:-2, lo:hi] - smooth[2:-2, lo:hi]).max() < 0.08


def test_maps_to_original_identity_and_errors():
    m = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    out = maps_to_original(m, [(16, 16), (16, 16)], 16)
    np.testing.assert_allclose(out[0], m[0], atol=1e-6)
    with pytest.raises(ValueError, match="2 maps for 1"):
        maps_to_original(m, [(16, 16)], 16)
    with pytest.raises(ValueError, match="fill"):
        maps_to_original(m, [(16, 16)] * 2, 16, fill="mean")
    with pytest.raises(ValueError, match="2-D"):
        maps_to_original(m[:, None], [(16, 16)] * 2, 16)


def test_masks_to_original_inverts_masks_to_input():
    rng = np.random.default_rng(0)
    for size in [(90, 160), (160, 90), (64, 64)]:
        mask = np.zeros((32, 32), bool)
        y, x = rng.integers(4, 20, size=2)
        mask[y : y + 9, x : x + 7] = True
        full = masks_to_original(mask[None], [size], 32, crop_mode="center")[0]
        assert full.shape == size and full.dtype == bool
        back = masks_to_input([full], 32, crop_mode="center")[0]
        iou = (back & mask).sum() / (back | mask).sum()
        assert iou > 0.85, (size, iou)
        # the borders the crop cut away are never marked
        y0, y1, x0, x1 = crop_box(size, (32, 32), "center")
        assert not full[:y0].any() and not full[y1:].any() and not full[:, :x0].any() and not full[:, x1:].any()
    with pytest.raises(ValueError, match="masks"):
        masks_to_original(np.zeros((2, 4, 4)), [(8, 8)], 4)


# ----------------------------------------------------------------- one decoder for model, datasets and plots


def _save_turned(path, pixels, orientation=6):
    """``pixels`` saved with an EXIF orientation (6: to be shown turned 90 degrees clockwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif)
    return path


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_the_same_for_the_model_the_datasets_and_the_plots(tmp_path, rng, suffix):
    pixels = rng.integers(0, 256, size=(20, 40, 3), dtype=np.uint8)  # stored 40 wide, 20 high
    path = _save_turned(tmp_path / "c" / "test" / "good" / f"000{suffix}", pixels)
    seen = np.asarray(load_image(path)[0])  # what ViTPatchTransformer is given
    assert seen.shape == (40, 20, 3)
    if suffix == ".png":  # lossless: exactly the stored pixels turned clockwise
        np.testing.assert_array_equal(seen, np.rot90(pixels, k=-1))
    np.testing.assert_array_equal(load_mvtec(tmp_path, "c", return_images=True).images[0], seen)
    np.testing.assert_array_equal(anomaly_map_rgb(path, np.zeros((4, 4)), 0, 1, alpha=0.0), seen)
    assert read_image_size(path) == (40, 20)
    assert load_masks(load_mvtec(tmp_path, "c")).shape == (1, 40, 20)  # a normal image's mask, from the header


def test_a_mask_turned_like_its_image_lies_on_it(tmp_path, rng):
    pixels = rng.integers(0, 256, size=(20, 40, 3), dtype=np.uint8)
    mask = np.zeros((20, 40), np.uint8)
    mask[2:6, 3:12] = 255
    _save_turned(tmp_path / "c" / "test" / "cut" / "000.png", pixels)
    _save_turned(tmp_path / "c" / "ground_truth" / "cut" / "000_mask.png", mask)
    masks = load_masks(load_mvtec(tmp_path, "c"))
    np.testing.assert_array_equal(masks[0], np.rot90(mask, k=-1) > 0)


def test_16_bit_dataset_images_are_what_the_model_sees_in_8_bits(tmp_path, rng):
    values = rng.integers(0, 65536, size=(12, 10), dtype=np.uint16)
    path = tmp_path / "c" / "test" / "good" / "000.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(values).save(path)
    image = load_mvtec(tmp_path, "c", return_images=True).images[0]
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.rint(load_image(path)[0] * 255.0))


def test_bool_arrays_are_black_and_white_everywhere():
    mask = np.array([[False, True]])
    expected = [[[0, 0, 0], [255, 255, 255]]]
    assert np.asarray(load_image(mask)[0]).tolist() == expected
    assert anomaly_map_rgb(mask, np.zeros((1, 2)), 0, 1, alpha=0.0).tolist() == expected


def test_one_size_rule_for_model_inputs_and_masks():
    data = {"paths": ["a.png"], "mask_paths": [None]}
    assert load_masks(data, size=(3, 4)).shape == (1, 3, 4)
    for bad in (2.5, (3, 0), "16", True):  # a float is not truncated, a bool is not an int
        with pytest.raises(ValueError, match="size must be a positive int"):
            load_masks(data, size=bad)
        with pytest.raises(ValueError, match="input_size must be a positive int"):
            masks_to_input([np.zeros((4, 4))], bad)


def test_shared_path_helper_is_beside_repo():
    # The tests locate ../shared relative to the repository, never inside it.
    from _helpers import SHARED

    assert SHARED == Path(__file__).resolve().parents[1].parent / "shared"
