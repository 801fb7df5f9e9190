import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sklearn_musc.datasets import (
    list_categories,
    load_btad,
    load_masks,
    load_mvtec,
    load_visa,
    make_synthetic_defects,
    save_synthetic_defects,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MVTEC_LOWRES = SHARED / "data" / "mvtec_ad_lowres"
MVTEC_CATEGORIES = [
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
]


def _write_image(path, size=(12, 10), value=0, mode="RGB"):
    """A small image of (height, width) ``size``, filled with ``value``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    if mode == "L":
        Image.new("L", (w, h), value).save(path)
    else:
        Image.new("RGB", (w, h), (value, value // 2, 255 - value)).save(path)
    return path


def _write_mask(path, size=(12, 10), box=(2, 5, 3, 7)):
    """A 0/255 mask with ones on rows box[0]:box[1], columns box[2]:box[3]."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(size, dtype=np.uint8)
    mask[box[0]:box[1], box[2]:box[3]] = 255
    Image.fromarray(mask).save(path)
    return path


@pytest.fixture
def mvtec_root(tmp_path):
    root = tmp_path / "mvtec"
    cat = root / "widget"
    for name in ["010", "002", "000", "001"]:
        _write_image(cat / "test" / "good" / f"{name}.png", value=10)
    for defect, names in {"crack": ["001", "000"], "bent": ["10", "2", "0"]}.items():
        for name in names:
            _write_image(cat / "test" / defect / f"{name}.png", value=200)
            _write_mask(cat / "ground_truth" / defect / f"{name}_mask.png")
    _write_image(root / "gadget" / "test" / "good" / "000.png")
    (root / "not_a_category").mkdir()
    (root / "readme.txt").write_text("hello")
    return root


def test_mvtec_order_labels_and_masks(mvtec_root):
    data = load_mvtec(mvtec_root, "widget")
    names = [str(Path(p).relative_to(mvtec_root / "widget" / "test")) for p in data.paths]
    # "good" first, then defect types alphabetically, files with numbers compared as numbers
    assert names == [
        "good/000.png", "good/001.png", "good/002.png", "good/010.png",
        "bent/0.png", "bent/2.png", "bent/10.png",
        "crack/000.png", "crack/001.png",
    ]
    assert data.defect_types == ["good"] * 4 + ["bent"] * 3 + ["crack"] * 2
    np.testing.assert_array_equal(data.labels, [0] * 4 + [1] * 5)
    assert data.labels.dtype.kind == "i"
    assert data.category == "widget" and data.dataset == "mvtec"
    assert data.mask_paths[:4] == [None] * 4
    for path, mask_path in zip(data.paths[4:], data.mask_paths[4:]):
        assert Path(mask_path).name == Path(path).stem + "_mask.png"
        assert Path(mask_path).parent.name == Path(path).parent.name
    assert "images" not in data

    masks = load_masks(data)
    assert masks.shape == (9, 12, 10) and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}
    assert not masks[:4].any()
    expected = np.zeros((12, 10), dtype=np.uint8)
    expected[2:5, 3:7] = 1
    for m in masks[4:]:
        np.testing.assert_array_equal(m, expected)


def test_mvtec_return_images(mvtec_root):
    data = load_mvtec(mvtec_root, "widget", return_images=True)
    assert len(data.images) == len(data.paths) == 9
    for image in data.images:
        assert image.shape == (12, 10, 3) and image.dtype == np.uint8
    assert data.images[0][0, 0].tolist() == [10, 5, 245]


def test_mvtec_grayscale_images_are_rgb(tmp_path):
    _write_image(tmp_path / "c" / "test" / "good" / "000.png", mode="L", value=77)
    data = load_mvtec(tmp_path, "c", return_images=True)
    assert data.images[0].shape == (12, 10, 3)
    assert (data.images[0] == 77).all()


def test_load_masks_resize_nearest(mvtec_root):
    data = load_mvtec(mvtec_root, "widget")
    masks = load_masks(data, size=(24, 20))
    assert masks.shape == (9, 24, 20)
    expected = np.zeros((24, 20), dtype=np.uint8)
    expected[4:10, 6:14] = 1  # nearest neighbour doubles each pixel
    np.testing.assert_array_equal(masks[5], expected)
    assert not masks[:4].any()
    assert load_masks(data, size=7).shape == (9, 7, 7)
    with pytest.raises(ValueError, match="size"):
        load_masks(data, size=(0, 3))


def test_load_masks_sizes(tmp_path):
    cat = tmp_path / "c"
    _write_image(cat / "test" / "good" / "0.png", size=(8, 8))
    _write_image(cat / "test" / "good" / "1.png", size=(16, 12))
    _write_image(cat / "test" / "hole" / "0.png", size=(16, 12))
    # a mask stored at another size than its image is brought to the image's size
    _write_mask(cat / "ground_truth" / "hole" / "0_mask.png", size=(8, 6), box=(0, 4, 0, 3))
    data = load_mvtec(tmp_path, "c")
    with pytest.raises(ValueError, match="differ in size.*size="):
        load_masks(data)
    masks = load_masks(data, size=(16, 12))
    assert masks.shape == (3, 16, 12)
    assert masks[2].sum() == 8 * 6 and masks[2][:8, :6].all()
    # with the images loaded, their arrays give the sizes
    data = load_mvtec(tmp_path, "c", return_images=True)
    del data.images[0], data.paths[0], data.mask_paths[0]
    assert load_masks(data).shape == (2, 16, 12)


def test_load_masks_threshold(tmp_path):
    cat = tmp_path / "c"
    _write_image(cat / "test" / "cut" / "0.png", size=(4, 4))
    values = np.array([[0, 1, 100, 200]] * 4, dtype=np.uint8)
    (cat / "ground_truth" / "cut").mkdir(parents=True)
    Image.fromarray(values).save(cat / "ground_truth" / "cut" / "0_mask.png")
    data = load_mvtec(tmp_path, "c")
    np.testing.assert_array_equal(load_masks(data)[0, 0], [0, 1, 1, 1])
    np.testing.assert_array_equal(load_masks(data, threshold=127)[0, 0], [0, 0, 0, 1])


def test_mvtec_errors(mvtec_root, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere.*ROOT/<category>/test"):
        load_mvtec(missing, "widget")
    with pytest.raises(ValueError, match="unknown category 'widgte'") as info:
        load_mvtec(mvtec_root, "widgte")
    message = str(info.value)
    assert "'gadget', 'widget'" in message and "did you mean 'widget'" in message
    assert "not_a_category" not in message
    # the category folder itself passed as root
    with pytest.raises(ValueError, match="pass its parent"):
        load_mvtec(mvtec_root / "widget", "widget")
    # an anomalous image without its mask
    mask = mvtec_root / "widget" / "ground_truth" / "crack" / "001_mask.png"
    mask.unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_mvtec(mvtec_root, "widget")
    message = str(info.value)
    assert str(mvtec_root / "widget" / "test" / "crack" / "001.png") in message
    assert str(mask) in message


def test_mvtec_empty_test_folder(tmp_path):
    (tmp_path / "c" / "test" / "good").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no test image"):
        load_mvtec(tmp_path, "c")


def test_list_categories(mvtec_root, tmp_path):
    assert list_categories(mvtec_root) == ["gadget", "widget"]
    assert list_categories(mvtec_root, dataset="btad") == ["gadget", "widget"]
    with pytest.raises(FileNotFoundError, match="no category"):
        list_categories(mvtec_root, dataset="visa")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_categories(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="dataset"):
        list_categories(mvtec_root, dataset="kolektor")
    for name in ["10", "2", "1"]:
        (tmp_path / "num" / name / "test").mkdir(parents=True)
    assert list_categories(tmp_path / "num") == ["1", "2", "10"]


# --------------------------------------------------------------------------- VisA


@pytest.fixture
def visa_root(tmp_path):
    root = tmp_path / "visa"
    for cat in ["candle", "pcb1"]:
        data = root / cat / "Data"
        for name in ["0010", "0002", "0001"]:
            _write_image(data / "Images" / "Normal" / f"{name}.JPG")
        for name in ["011", "000", "002"]:
            _write_image(data / "Images" / "Anomaly" / f"{name}.JPG")
            _write_mask(data / "Masks" / "Anomaly" / f"{name}.png")
    return root


def _write_split(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows)
    return path


def _visa_rows(cat):
    images = f"{cat}/Data/Images"
    masks = f"{cat}/Data/Masks/Anomaly"
    return [
        [cat, "train", "normal", f"{images}/Normal/0001.JPG", ""],
        [cat, "test", "anomaly", f"{images}/Anomaly/011.JPG", f"{masks}/011.png"],
        [cat, "test", "normal", f"{images}/Normal/0010.JPG", ""],
        [cat, "test", "anomaly", f"{images}/Anomaly/000.JPG", f"{masks}/000.png"],
        [cat, "test", "normal", f"{images}/Normal/0002.JPG", ""],
    ]


def test_visa_folders(visa_root):
    data = load_visa(visa_root, "candle")
    assert data.split_csv is None
    names = [Path(p).name for p in data.paths]
    assert names == ["0001.JPG", "0002.JPG", "0010.JPG", "000.JPG", "002.JPG", "011.JPG"]
    assert data.defect_types == ["good"] * 3 + ["anomaly"] * 3
    np.testing.assert_array_equal(data.labels, [0, 0, 0, 1, 1, 1])
    assert [Path(m).name if m else None for m in data.mask_paths] == [
        None, None, None, "000.png", "002.png", "011.png"
    ]
    masks = load_masks(data)
    assert masks.shape == (6, 12, 10)
    assert not masks[:3].any() and all(m.sum() == 12 for m in masks[3:])
    assert data.dataset == "visa"
    assert list_categories(visa_root, dataset="visa") == ["candle", "pcb1"]


def test_visa_split_csv(visa_root):
    rows = _visa_rows("candle") + _visa_rows("pcb1")
    split = _write_split(visa_root / "split_csv" / "1cls.csv", rows)
    for data in (load_visa(visa_root, "candle"), load_visa(visa_root, "candle", split)):
        assert data.split_csv == str(split)
        names = [Path(p).name for p in data.paths]
        assert names == ["0002.JPG", "0010.JPG", "000.JPG", "011.JPG"]  # test rows only
        assert all("candle" in p for p in data.paths)
        assert data.defect_types == ["good", "good", "anomaly", "anomaly"]
        np.testing.assert_array_equal(data.labels, [0, 0, 1, 1])
        assert Path(data.mask_paths[3]).name == "011.png"
        assert load_masks(data).shape == (4, 12, 10)
    # split_csv=False ignores the file
    assert len(load_visa(visa_root, "candle", split_csv=False).paths) == 6


def test_visa_errors(visa_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="Data/Images"):
        load_visa(tmp_path / "nowhere", "candle")
    with pytest.raises(ValueError, match="did you mean 'candle'"):
        load_visa(visa_root, "candel")
    with pytest.raises(FileNotFoundError, match="split file"):
        load_visa(visa_root, "candle", split_csv=tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("object,split,image\ncandle,test,x.JPG\n")
    with pytest.raises(ValueError, match="lacks the columns"):
        load_visa(visa_root, "candle", split_csv=bad)
    only_pcb = _write_split(tmp_path / "pcb.csv", _visa_rows("pcb1"))
    with pytest.raises(ValueError, match="no test rows for category 'candle'"):
        load_visa(visa_root, "candle", split_csv=only_pcb)
    rows = _visa_rows("candle")
    rows[1][4] = ""  # an anomalous row without its mask
    no_mask = _write_split(tmp_path / "nomask.csv", rows)
    with pytest.raises(FileNotFoundError, match="011.JPG"):
        load_visa(visa_root, "candle", split_csv=no_mask)
    (visa_root / "candle" / "Data" / "Masks" / "Anomaly" / "002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"002\.JPG.*Masks/Anomaly/002\.png"):
        load_visa(visa_root, "candle")


# --------------------------------------------------------------------------- BTAD


@pytest.fixture
def btad_root(tmp_path):
    root = tmp_path / "btad"
    for cat, image_ext, mask_ext in [("01", ".bmp", ".png"), ("03", ".bmp", ".bmp")]:
        for name in ["0010", "0002"]:
            _write_image(root / cat / "test" / "ok" / f"{name}{image_ext}")
        for name in ["0003", "0001"]:
            _write_image(root / cat / "test" / "ko" / f"{name}{image_ext}")
            _write_mask(root / cat / "ground_truth" / "ko" / f"{name}{mask_ext}")
    return root


def test_btad(btad_root):
    assert list_categories(btad_root, dataset="btad") == ["01", "03"]
    for cat, mask_ext in [("01", ".png"), ("03", ".bmp")]:
        data = load_btad(btad_root, cat, return_images=True)
        assert [Path(p).name for p in data.paths] == [
            "0002.bmp", "0010.bmp", "0001.bmp", "0003.bmp"
        ]
        assert data.defect_types == ["good", "good", "ko", "ko"]
        np.testing.assert_array_equal(data.labels, [0, 0, 1, 1])
        assert [Path(m).name if m else None for m in data.mask_paths] == [
            None, None, "0001" + mask_ext, "0003" + mask_ext
        ]
        assert data.images[0].shape == (12, 10, 3)
        masks = load_masks(data)
        assert masks.shape == (4, 12, 10) and masks[2:].sum() == 24 and not masks[:2].any()


def test_btad_errors(btad_root):
    with pytest.raises(ValueError, match="available categories: '01', '03'"):
        load_btad(btad_root, "02")
    (btad_root / "01" / "ground_truth" / "ko" / "0003.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"0003\.bmp.*ground_truth/ko/0003\.png"):
        load_btad(btad_root, "01")


# --------------------------------------------------------------------------- real data


@pytest.mark.shared_data
def test_real_mvtec_bottle():
    if not MVTEC_LOWRES.is_dir():
        pytest.skip(f"{MVTEC_LOWRES} is absent")
    test_dir = MVTEC_LOWRES / "bottle" / "test"
    counts = {d.name: len(list(d.glob("*.png"))) for d in test_dir.iterdir() if d.is_dir()}
    n_total, n_anomalous = sum(counts.values()), sum(counts.values()) - counts["good"]
    assert (n_total, n_anomalous) == (83, 63)

    data = load_mvtec(MVTEC_LOWRES, "bottle", return_images=True)
    assert len(data.paths) == len(data.images) == n_total
    assert int(data.labels.sum()) == n_anomalous
    assert data.defect_types[: counts["good"]] == ["good"] * counts["good"]
    assert sorted(set(data.defect_types)) == sorted(counts)
    masks = load_masks(data)
    assert masks.shape[0] == n_total
    for image, mask, label in zip(data.images, masks, data.labels):
        assert mask.shape == image.shape[:2]
        assert bool(mask.any()) == bool(label)
    assert list_categories(MVTEC_LOWRES) == MVTEC_CATEGORIES


# --------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("kind", ["texture", "object"])
def test_synthetic_shapes_and_masks(kind):
    data = make_synthetic_defects(n_images=10, n_anomalous=4, image_size=64, kind=kind,
                                  random_state=3)
    assert data.images.shape == (10, 64, 64, 3) and data.images.dtype == np.uint8
    assert data.masks.shape == (10, 64, 64) and data.masks.dtype == np.uint8
    assert set(np.unique(data.masks)) <= {0, 1}
    assert data.labels.shape == (10,) and data.labels.sum() == 4
    has_defect = data.masks.reshape(10, -1).any(axis=1)
    np.testing.assert_array_equal(has_defect, data.labels == 1)
    assert all((t == "good") == (label == 0) for t, label in zip(data.defect_types, data.labels))
    assert {t for t in data.defect_types if t != "good"} == {"scratch", "spot", "missing"}
    # defects are 5-15 % of the image side: neither tiny nor huge
    areas = data.masks.reshape(10, -1).sum(axis=1)[data.labels == 1]
    assert (areas >= 10).all() and (areas <= 0.05 * 64 * 64).all()


def test_synthetic_determinism():
    a = make_synthetic_defects(8, 3, 48, kind="object", random_state=7)
    b = make_synthetic_defects(8, 3, 48, kind="object", random_state=7)
    c = make_synthetic_defects(8, 3, 48, kind="object", random_state=8)
    for key in ("images", "masks", "labels"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a.defect_types == b.defect_types
    assert not np.array_equal(a.images, c.images)
    rng_a = make_synthetic_defects(8, 3, 48, random_state=np.random.RandomState(1))
    rng_b = make_synthetic_defects(8, 3, 48, random_state=np.random.RandomState(1))
    np.testing.assert_array_equal(rng_a.images, rng_b.images)


@pytest.mark.parametrize("kind", ["texture", "object"])
def test_synthetic_defects_visible(kind):
    for seed in range(3):
        data = make_synthetic_defects(12, 4, 96, kind=kind, random_state=seed)
        images = data.images.astype(np.float64)
        normal_mean = images[data.labels == 0].mean(axis=0)
        # normal images vary a little, but are not all the same
        assert np.abs(images[data.labels == 0] - normal_mean).mean() > 1
        for i in np.flatnonzero(data.labels):
            diff = np.abs(images[i] - normal_mean).mean(axis=-1)
            mask = data.masks[i].astype(bool)
            inside, outside = diff[mask].mean(), diff[~mask].mean()
            assert inside > 2 * outside and inside - outside > 20, (data.defect_types[i], seed)


def test_synthetic_options():
    data = make_synthetic_defects(5, 0, (40, 56), random_state=0)
    assert data.images.shape == (5, 40, 56, 3) and not data.masks.any()
    assert data.defect_types == ["good"] * 5
    data = make_synthetic_defects(6, 6, 32, defects="spot", random_state=0)
    assert data.defect_types == ["spot"] * 6 and data.masks.reshape(6, -1).any(axis=1).all()
    assert load_masks(data, size=16).shape == (6, 16, 16)
    for kwargs in [dict(n_images=0), dict(n_anomalous=13), dict(image_size=8),
                   dict(kind="fabric"), dict(defects=("crack",)), dict(defects=())]:
        with pytest.raises(ValueError):
            make_synthetic_defects(**kwargs)


def test_save_synthetic_round_trip(tmp_path):
    saved = save_synthetic_defects(tmp_path / "fabric", n_images=9, n_anomalous=4,
                                   image_size=40, kind="texture", random_state=2)
    data = saved.data
    assert saved.root == str(tmp_path.resolve()) and saved.category == "fabric"
    loaded = load_mvtec(saved.root, saved.category, return_images=True)
    assert len(loaded.paths) == 9
    # load_mvtec's order: good first, then the defect types alphabetically
    assert loaded.defect_types == sorted(data.defect_types, key=lambda t: (t != "good", t))
    position = {str(Path(p).resolve()): i for i, p in enumerate(saved.paths)}
    order = [position[str(Path(p).resolve())] for p in loaded.paths]
    assert sorted(order) == list(range(9))
    np.testing.assert_array_equal(np.stack(loaded.images), data.images[order])
    np.testing.assert_array_equal(loaded.labels, data.labels[order])
    assert loaded.defect_types == [data.defect_types[i] for i in order]
    np.testing.assert_array_equal(load_masks(loaded), data.masks[order])
    for path, mask_path in zip(saved.paths, saved.mask_paths):
        assert (mask_path is None) == (Path(path).parent.name == "good")
    # existing folders are kept unless overwrite=True
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_synthetic_defects(tmp_path / "fabric", data=data)
    other = make_synthetic_defects(3, 1, 40, random_state=5)
    save_synthetic_defects(tmp_path / "fabric", data=other, overwrite=True)
    assert len(load_mvtec(tmp_path, "fabric").paths) == 3
    with pytest.raises(TypeError, match="either data"):
        save_synthetic_defects(tmp_path / "x", data=other, n_images=3)


@pytest.mark.parametrize("kind", ["texture", "object"])
def test_synthetic_repeated_defect_is_one_defect_copied(kind):
    data = make_synthetic_defects(n_images=20, n_anomalous=8, n_repeated=5, image_size=64, kind=kind,
                                  defects=("spot", "scratch"), random_state=3)
    types = np.array(data.defect_types)
    copies = np.flatnonzero(types == "spot-repeated")
    assert len(copies) == 5 and data.labels.sum() == 8 and (data.labels[copies] == 1).all()
    mask = data.masks[copies[0]].astype(bool)
    assert mask.any()
    for i in copies:  # the same pixels at the same place, and the same mask
        assert (data.masks[i] == data.masks[copies[0]]).all()
        assert (data.images[i][mask] == data.images[copies[0]][mask]).all()
    others = np.flatnonzero((data.labels == 1) & (types != "spot-repeated"))
    assert len(others) == 3 and all(not (data.masks[i] == data.masks[copies[0]]).all() for i in others)
    # without n_repeated the batch is what it always was
    plain = make_synthetic_defects(n_images=20, n_anomalous=8, image_size=64, kind=kind, random_state=3)
    again = make_synthetic_defects(n_images=20, n_anomalous=8, n_repeated=0, image_size=64, kind=kind,
                                   random_state=3)
    assert (plain.images == again.images).all()


@pytest.mark.parametrize("n_repeated", [-1, 9])
def test_synthetic_n_repeated_out_of_range(n_repeated):
    with pytest.raises(ValueError, match=r"n_repeated must lie in \[0, n_anomalous=8\]"):
        make_synthetic_defects(n_images=20, n_anomalous=8, n_repeated=n_repeated)
