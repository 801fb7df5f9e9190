"""Readers for industrial anomaly detection datasets and a synthetic generator.

In the MuSc setting every category's *test* set is one unlabeled batch: the
readers below list its images, ground-truth masks and labels, in a stable order.

Order convention (all readers)
------------------------------
Images are sorted by defect type, with ``"good"`` (the normal images) first and
the other defect types after it in alphabetical order; within a defect type,
files are sorted by name, numbers compared as numbers (``"2.png"`` before
``"10.png"``). The position of an image therefore depends only on its defect
type and file name, never on the file system.

Masks
-----
The readers return mask *paths*; :func:`load_masks` reads them as one binary
``(n_images, H, W)`` uint8 array (0 = normal, 1 = anomalous), resized with
nearest-neighbour interpolation. Normal images get all-zero masks of their
image's size.

Supported layouts
-----------------
* MVTec AD (:func:`load_mvtec`): ``ROOT/<category>/test/<defect>/NNN.png`` and
  ``ROOT/<category>/ground_truth/<defect>/NNN_mask.png``; ``good`` has no masks.
* VisA (:func:`load_visa`): ``ROOT/<category>/Data/Images/{Normal,Anomaly}/*.JPG``,
  ``ROOT/<category>/Data/Masks/Anomaly/*.png`` and, optionally, the split file
  ``ROOT/split_csv/1cls.csv`` (columns ``object,split,label,image,mask``).
* BTAD (:func:`load_btad`): ``ROOT/<category>/test/{ok,ko}/*.{bmp,png}`` and
  ``ROOT/<category>/ground_truth/ko/<stem>.{png,bmp}``.

:func:`make_synthetic_defects` draws small synthetic batches (textures or
objects with scratches, spots and missing parts) for demos and tests, and
:func:`save_synthetic_defects` writes one in the MVTec AD layout.
"""

from __future__ import annotations

import csv
import difflib
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.utils import Bunch, check_random_state

from .preprocessing import IMAGE_SUFFIXES

__all__ = [
    "list_categories",
    "load_btad",
    "load_masks",
    "load_mvtec",
    "load_visa",
    "make_synthetic_defects",
    "save_synthetic_defects",
]

IMAGE_EXTENSIONS = IMAGE_SUFFIXES  # one list for the loaders and the command line

_LAYOUTS = {
    "mvtec": "ROOT/<category>/test/<defect>/NNN.png (MVTec AD)",
    "visa": "ROOT/<category>/Data/Images/{Normal,Anomaly}/*.JPG (VisA)",
    "btad": "ROOT/<category>/test/{ok,ko}/*.bmp (BTAD)",
}
_MARKERS = {
    "mvtec": ("test",),
    "visa": ("Data", "Images"),
    "btad": ("test",),
}


# --------------------------------------------------------------------------- helpers


def _natural_key(name):
    """Sort key comparing runs of digits as numbers ("2" < "10")."""
    parts = re.split(r"(\d+)", str(name))
    return tuple((0, int(p), p) if p.isdigit() else (1, p.lower(), p) for p in parts if p)


def _type_key(defect_type):
    """"good" first, then the other defect types alphabetically."""
    return (defect_type != "good", _natural_key(defect_type))


def _image_files(folder):
    """Image files of ``folder`` (not recursive, hidden files skipped), naturally sorted."""
    files = [
        p
        for p in Path(folder).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    ]
    return sorted(files, key=lambda p: _natural_key(p.name))


def _check_root(root, dataset):
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset root {str(root)!r} does not exist or is not a folder; expected a folder "
            f"holding one folder per category, laid out as {_LAYOUTS[dataset]}"
        )
    return root


def _category_dir(root, category, dataset):
    root = _check_root(root, dataset)
    category = str(category)
    folder = root / category
    if folder.is_dir() and folder.joinpath(*_MARKERS[dataset]).is_dir():
        return folder
    available = _find_categories(root, dataset)
    if folder.is_dir():
        where = str(folder.joinpath(*_MARKERS[dataset]))
        message = f"category {category!r} has no folder {where!r}"
    else:
        message = f"unknown category {category!r} under {str(root)!r}"
    message += f" (expected layout: {_LAYOUTS[dataset]}); available categories: "
    message += ", ".join(repr(c) for c in available) if available else "none found"
    close = difflib.get_close_matches(category, available, n=3)
    if close:
        message += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
    if not available and root.joinpath(*_MARKERS[dataset]).is_dir():
        message += (
            f"; {str(root)!r} looks like a category folder itself: pass its parent as root "
            f"and {root.name!r} as category"
        )
    raise ValueError(message)


def _find_categories(root, dataset):
    return sorted(
        (
            p.name
            for p in Path(root).iterdir()
            if p.is_dir() and not p.name.startswith(".") and p.joinpath(*_MARKERS[dataset]).is_dir()
        ),
        key=_natural_key,
    )


def _read_rgb(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def _make_bunch(records, category, dataset, root, return_images):
    """records: list of (defect_type, image_path, mask_path or None), already ordered."""
    paths = [str(r[1]) for r in records]
    bunch = Bunch(
        paths=paths,
        mask_paths=[None if r[2] is None else str(r[2]) for r in records],
        labels=np.array([int(r[0] != "good") for r in records], dtype=np.int64),
        defect_types=[r[0] for r in records],
        category=str(category),
        dataset=dataset,
        root=str(root),
    )
    if return_images:
        bunch.images = [_read_rgb(p) for p in paths]
    return bunch


def _find_mask(folder, stem):
    """The mask file ``folder/stem.<image extension>``, .png preferred, or None."""
    for ext in IMAGE_EXTENSIONS:
        for candidate in (folder / (stem + ext), folder / (stem + ext.upper())):
            if candidate.is_file():
                return candidate
    return None


def _missing_mask(image, expected):
    return FileNotFoundError(
        f"no ground-truth mask for the anomalous image {str(image)!r}: expected {str(expected)!r}"
    )


# --------------------------------------------------------------------------- readers


def list_categories(root, dataset="mvtec"):
    """Names of the categories found under a dataset root.

    A category is a sub-folder laid out as the dataset expects (with a ``test``
    folder for MVTec AD and BTAD, ``Data/Images`` for VisA).

    Parameters
    ----------
    root : str or path-like
        The dataset root, holding one folder per category.
    dataset : {"mvtec", "visa", "btad"}, default="mvtec"
        The layout to look for.

    Returns
    -------
    categories : list of str
        Sorted category names (numbers compared as numbers).

    Raises
    ------
    FileNotFoundError
        If ``root`` is not a folder or holds no category of the given layout.

    Examples
    --------
    >>> import tempfile
    >>> from sklearn_musc.datasets import list_categories, save_synthetic_defects
    >>> root = tempfile.mkdtemp()
    >>> _ = save_synthetic_defects(f"{root}/widget", n_images=4, n_anomalous=1, image_size=32)
    >>> list_categories(root)
    ['widget']
    """
    if dataset not in _LAYOUTS:
        raise ValueError(f"dataset must be one of {sorted(_LAYOUTS)}, got {dataset!r}")
    root = _check_root(root, dataset)
    categories = _find_categories(root, dataset)
    if not categories:
        raise FileNotFoundError(
            f"no category found under {str(root)!r}: expected one folder per category, "
            f"laid out as {_LAYOUTS[dataset]}"
        )
    return categories


def load_mvtec(root, category, return_images=False):
    """Test images, masks and labels of one MVTec AD category.

    Parameters
    ----------
    root : str or path-like
        The MVTec AD root: ``ROOT/<category>/test/<defect>/NNN.png`` holds the
        images and ``ROOT/<category>/ground_truth/<defect>/NNN_mask.png`` the
        masks of the anomalous ones (``good`` has no masks).
    category : str
        The category, e.g. ``"bottle"``.
    return_images : bool, default=False
        Also read the images, as a list of (H, W, 3) uint8 RGB arrays.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``paths`` (list of str), ``mask_paths`` (list of str, None for normal
        images), ``labels`` (ndarray of int, 1 = anomalous), ``defect_types``
        (list of str, ``"good"`` for normal images), ``category``, ``dataset``
        (``"mvtec"``), ``root`` and, with ``return_images``, ``images``. The
        order is ``"good"`` first, then the defect types alphabetically, files
        by name with numbers compared as numbers. Read masks with
        :func:`load_masks`.

    Raises
    ------
    FileNotFoundError
        If ``root`` is not a folder or an anomalous image has no mask.
    ValueError
        If ``category`` is not found (the message lists those available).

    Examples
    --------
    >>> import tempfile
    >>> from sklearn_musc.datasets import load_masks, load_mvtec, save_synthetic_defects
    >>> root = tempfile.mkdtemp()
    >>> _ = save_synthetic_defects(f"{root}/widget", n_images=5, n_anomalous=2,
    ...                            image_size=32, random_state=0)
    >>> data = load_mvtec(root, "widget")
    >>> data.labels
    array([0, 0, 0, 1, 1])
    >>> load_masks(data).shape
    (5, 32, 32)
    """
    folder = _category_dir(root, category, "mvtec")
    test_dir = folder / "test"
    gt_dir = folder / "ground_truth"
    defect_dirs = sorted(
        (p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: _type_key(p.name),
    )
    records = []
    for defect_dir in defect_dirs:
        defect = defect_dir.name
        for image in _image_files(defect_dir):
            mask = None
            if defect != "good":
                mask = _find_mask(gt_dir / defect, image.stem + "_mask")
                if mask is None:
                    raise _missing_mask(image, gt_dir / defect / (image.stem + "_mask.png"))
            records.append((defect, image, mask))
    if not records:
        raise FileNotFoundError(
            f"no test image found under {str(test_dir)!r}: expected {_LAYOUTS['mvtec']}"
        )
    return _make_bunch(records, category, "mvtec", root, return_images)


def load_visa(root, category, split_csv=None, return_images=False):
    """Test images, masks and labels of one VisA category.

    Parameters
    ----------
    root : str or path-like
        The VisA root: ``ROOT/<category>/Data/Images/{Normal,Anomaly}/*.JPG``
        and ``ROOT/<category>/Data/Masks/Anomaly/*.png``.
    category : str
        The category, e.g. ``"candle"``.
    split_csv : str, path-like, None or False, default=None
        A split file with the columns ``object,split,label,image,mask``
        (``label`` is ``"normal"`` or ``"anomaly"``; ``image`` and ``mask`` are
        relative to ``root``): the rows of ``category`` whose split is
        ``"test"`` are read. None uses ``ROOT/split_csv/1cls.csv`` when it
        exists and otherwise every image of the category's folders; False
        always uses every image of the folders (masks matched by file stem).
    return_images : bool, default=False
        Also read the images, as a list of (H, W, 3) uint8 RGB arrays.

    Returns
    -------
    data : sklearn.utils.Bunch
        As for :func:`load_mvtec`, with the defect types ``"good"`` and
        ``"anomaly"`` (normal images first), ``dataset="visa"`` and
        ``split_csv`` (the split file used, or None).

    Raises
    ------
    FileNotFoundError
        If ``root`` or ``split_csv`` is missing, or an anomalous image has no
        mask.
    ValueError
        If ``category`` is not found, or the split file lacks columns or rows
        for it.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from sklearn_musc.datasets import load_visa
    >>> root = Path(tempfile.mkdtemp())
    >>> for sub, name in [("Images/Normal", "0001.JPG"), ("Images/Anomaly", "000.JPG"),
    ...                   ("Masks/Anomaly", "000.png")]:
    ...     (root / "candle/Data" / sub).mkdir(parents=True, exist_ok=True)
    ...     Image.new("RGB", (8, 8)).save(root / "candle/Data" / sub / name)
    >>> data = load_visa(root, "candle")
    >>> data.defect_types, data.labels
    (['good', 'anomaly'], array([0, 1]))
    """
    folder = _category_dir(root, category, "visa")
    root = Path(root)
    if split_csv is None:
        default = root / "split_csv" / "1cls.csv"
        split_csv = default if default.is_file() else False
    if split_csv is False:
        records = _visa_from_folders(folder)
        used = None
    else:
        records = _visa_from_csv(root, str(category), Path(split_csv))
        used = str(split_csv)
    bunch = _make_bunch(records, category, "visa", root, return_images)
    bunch.split_csv = used
    return bunch


def _folder_records(image_dirs, mask_dir):
    """(defect, image, mask) of the images in each (folder, defect type) pair.

    Normal ("good") images have no mask; the mask of any other image is the
    file of the same stem in ``mask_dir``. Missing folders are skipped.
    """
    records = []
    for image_dir, defect in image_dirs:
        if not image_dir.is_dir():
            continue
        for image in _image_files(image_dir):
            mask = None
            if defect != "good":
                mask = _find_mask(mask_dir, image.stem)
                if mask is None:
                    raise _missing_mask(image, mask_dir / (image.stem + ".png"))
            records.append((defect, image, mask))
    return records


def _visa_from_folders(folder):
    images_dir = folder / "Data" / "Images"
    records = _folder_records(
        [(images_dir / "Normal", "good"), (images_dir / "Anomaly", "anomaly")],
        folder / "Data" / "Masks" / "Anomaly",
    )
    if not records:
        raise FileNotFoundError(
            f"no image found under {str(images_dir)!r}: expected {_LAYOUTS['visa']}"
        )
    return records


def _visa_from_csv(root, category, split_csv):
    if not split_csv.is_file():
        raise FileNotFoundError(
            f"VisA split file {str(split_csv)!r} does not exist; expected a CSV file with "
            "the columns object,split,label,image,mask (e.g. ROOT/split_csv/1cls.csv)"
        )
    with open(split_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        missing = {"object", "split", "label", "image", "mask"} - set(fields)
        if missing:
            raise ValueError(
                f"VisA split file {str(split_csv)!r} lacks the columns {sorted(missing)}; "
                "expected object,split,label,image,mask"
            )
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    records = []
    for row in rows:
        if row["object"] != category or row["split"].lower() != "test":
            continue
        label = row["label"].lower()
        if label not in ("normal", "anomaly"):
            raise ValueError(
                f"VisA split file {str(split_csv)!r}: label must be 'normal' or 'anomaly', "
                f"got {row['label']!r} for {row['image']!r}"
            )
        image = root / row["image"]
        if not image.is_file():
            raise FileNotFoundError(
                f"image {str(image)!r} listed in {str(split_csv)!r} does not exist"
            )
        mask = None
        if label == "anomaly":
            expected = root / row["mask"] if row["mask"] else None
            if expected is None or not expected.is_file():
                if expected is None:
                    expected = root / category / "Data" / "Masks" / "Anomaly" / (
                        image.stem + ".png"
                    )
                raise _missing_mask(image, expected)
            mask = expected
        records.append(("good" if label == "normal" else "anomaly", image, mask))
    if not records:
        raise ValueError(
            f"VisA split file {str(split_csv)!r} has no test rows for category {category!r}"
        )
    records.sort(key=lambda r: (_type_key(r[0]), _natural_key(r[1].name), _natural_key(r[1])))
    return records


def load_btad(root, category, return_images=False):
    """Test images, masks and labels of one BTAD category.

    Parameters
    ----------
    root : str or path-like
        The BTAD root: ``ROOT/<category>/test/{ok,ko}/*.{bmp,png}`` and the
        masks ``ROOT/<category>/ground_truth/ko/<stem>.{png,bmp}``, matched to
        the images by file stem (their extensions may differ).
    category : str
        ``"01"``, ``"02"`` or ``"03"``.
    return_images : bool, default=False
        Also read the images, as a list of (H, W, 3) uint8 RGB arrays.

    Returns
    -------
    data : sklearn.utils.Bunch
        As for :func:`load_mvtec`, with the defect types ``"good"`` (folder
        ``ok``, first) and ``"ko"`` and ``dataset="btad"``.

    Raises
    ------
    FileNotFoundError
        If ``root`` is not a folder or an anomalous image has no mask.
    ValueError
        If ``category`` is not found (the message lists those available).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from sklearn_musc.datasets import load_btad
    >>> root = Path(tempfile.mkdtemp())
    >>> for sub, name in [("test/ok", "0000.bmp"), ("test/ko", "0001.bmp"),
    ...                   ("ground_truth/ko", "0001.png")]:
    ...     (root / "01" / sub).mkdir(parents=True, exist_ok=True)
    ...     Image.new("RGB", (8, 8)).save(root / "01" / sub / name)
    >>> load_btad(root, "01").defect_types
    ['good', 'ko']
    """
    folder = _category_dir(root, category, "btad")
    test_dir = folder / "test"
    records = _folder_records([(test_dir / "ok", "good"), (test_dir / "ko", "ko")],
                              folder / "ground_truth" / "ko")
    if not records:
        raise FileNotFoundError(
            f"no test image found under {str(test_dir)!r}: expected {_LAYOUTS['btad']}"
        )
    return _make_bunch(records, category, "btad", root, return_images)


def _check_size(size):
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be an int or a pair (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def _image_size(bunch, i):
    """(height, width) of image i, from the loaded arrays or the file header."""
    images = bunch.get("images")
    if images is not None:
        return tuple(np.asarray(images[i]).shape[:2])
    with Image.open(bunch["paths"][i]) as image:
        return image.size[::-1]


def load_masks(bunch, size=None, threshold=0):
    """Binary ground-truth masks of a dataset read by this module.

    Parameters
    ----------
    bunch : sklearn.utils.Bunch
        The output of :func:`load_mvtec`, :func:`load_visa` or
        :func:`load_btad` (any mapping with ``paths`` and ``mask_paths``), or
        of :func:`make_synthetic_defects` (its ``masks`` are returned, resized).
    size : int or (int, int), optional
        The (height, width) of the masks; an int gives square masks. None keeps
        each image's own size (masks whose size differs from their image's are
        resized to it), which must then be the same for all images.
    threshold : int, default=0
        A mask pixel is anomalous when its grey value exceeds ``threshold``.

    Returns
    -------
    masks : ndarray of shape (n_images, H, W), dtype uint8
        1 on anomalous pixels, 0 elsewhere; all zeros for normal images.
        Resizing uses nearest-neighbour interpolation.

    Raises
    ------
    ValueError
        If ``size`` is None and the images differ in size.

    Examples
    --------
    >>> from sklearn_musc.datasets import load_masks, make_synthetic_defects
    >>> data = make_synthetic_defects(n_images=4, n_anomalous=1, image_size=64, random_state=0)
    >>> load_masks(data, size=(16, 32)).shape
    (4, 16, 32)
    """
    size = _check_size(size)
    if "mask_paths" not in bunch and "masks" in bunch:
        masks = np.asarray(bunch["masks"])
        if size is None or masks.shape[1:] == size:
            return (masks > threshold).astype(np.uint8)
        return np.stack([_resize_mask(m > threshold, size) for m in masks])
    mask_paths = bunch["mask_paths"]
    out = []
    for i, mask_path in enumerate(mask_paths):
        target = size if size is not None else _image_size(bunch, i)
        if mask_path is None:
            out.append(np.zeros(target, dtype=np.uint8))
            continue
        with Image.open(mask_path) as image:
            values = np.asarray(image.convert("L"))
        out.append(_resize_mask(values > threshold, target))
    if not out:
        return np.zeros((0,) + (size or (0, 0)), dtype=np.uint8)
    shapes = sorted({m.shape for m in out})
    if len(shapes) > 1:
        raise ValueError(
            f"the images differ in size ({', '.join(str(s) for s in shapes[:5])}"
            f"{', ...' if len(shapes) > 5 else ''}); pass size=(height, width) to resize "
            "all masks to one size"
        )
    return np.stack(out)


def _resize_mask(binary, size):
    binary = np.asarray(binary, dtype=bool)
    if binary.shape == tuple(size):
        return binary.astype(np.uint8)
    image = Image.fromarray(binary.astype(np.uint8) * 255)
    resized = image.resize((size[1], size[0]), Image.NEAREST)
    return (np.asarray(resized) > 127).astype(np.uint8)


# --------------------------------------------------------------------------- synthetic

_DEFECT_KINDS = ("scratch", "spot", "missing")


def _smooth_noise(rng, n, size, cells):
    """(n, H, W) smooth noise in about [-1, 1]: bilinear upsampling of a coarse grid."""
    h, w = size
    coarse = rng.uniform(-1.0, 1.0, size=(n, cells + 1, cells + 1))
    y = np.linspace(0, cells, h)
    x = np.linspace(0, cells, w)
    y0 = np.minimum(y.astype(int), cells - 1)
    x0 = np.minimum(x.astype(int), cells - 1)
    fy = (y - y0)[None, :, None]
    fx = (x - x0)[None, None, :]
    fy = fy * fy * (3 - 2 * fy)  # smoothstep: no visible grid creases
    fx = fx * fx * (3 - 2 * fx)
    a = coarse[:, y0][:, :, x0]
    b = coarse[:, y0][:, :, x0 + 1]
    c = coarse[:, y0 + 1][:, :, x0]
    d = coarse[:, y0 + 1][:, :, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _texture_batch(rng, n, size):
    """Woven fabric: alternating warp/weft threads, jittered and lit per image."""
    h, w = size
    side = min(h, w)
    period = max(side / 10.0, 4.0)
    shift = rng.uniform(-0.25, 0.25, size=(n, 2)) * period
    # separable pieces on (n, H, 1) and (n, 1, W), broadcast once
    y = np.arange(h)[None, :, None] + shift[:, 0, None, None]
    x = np.arange(w)[None, None, :] + shift[:, 1, None, None]
    u = 2 * np.pi * x / period
    v = 2 * np.pi * y / period
    warp = np.sqrt(np.abs(np.sin(u)))
    weft = np.sqrt(np.abs(np.sin(v)))
    # a thread crossing: warp on top in one half-cell, weft in the other (basket weave)
    cell = (np.floor(x / (period / 2)) + np.floor(y / (period / 2))) % 2 == 0
    weave = np.where(cell, warp * (0.75 + 0.25 * np.abs(np.cos(v))),
                     weft * (0.75 + 0.25 * np.abs(np.cos(u))))
    lum = 0.45 + 0.35 * weave
    lum = lum + 0.05 * _smooth_noise(rng, n, size, 4)
    gain = rng.uniform(0.9, 1.1, size=(n, 1, 1))
    tilt = rng.uniform(-0.06, 0.06, size=(n, 2))
    yy = np.linspace(-0.5, 0.5, h)[None, :, None]
    xx = np.linspace(-0.5, 0.5, w)[None, None, :]
    light = 1 + tilt[:, 0, None, None] * yy + tilt[:, 1, None, None] * xx
    lum = lum * gain * light
    colour = np.array([0.78, 0.66, 0.50])
    images = lum[..., None] * colour
    images += 0.012 * rng.standard_normal(images.shape, dtype=np.float32)
    support = np.ones((n, h, w), dtype=bool)
    background = np.array([0.06, 0.05, 0.05])  # what a hole shows
    return images, support, background, None


def _object_batch(rng, n, size):
    """A metallic 'bottle top' disk on a uniform background, shifted and lit per image."""
    h, w = size
    side = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy = h / 2 + rng.uniform(-0.03, 0.03, size=n) * side
    cx = w / 2 + rng.uniform(-0.03, 0.03, size=n) * side
    radius = side * rng.uniform(0.30, 0.32, size=n)
    dy = yy[None] - cy[:, None, None]
    dx = xx[None] - cx[:, None, None]
    r = np.hypot(dy, dx) / radius[:, None, None]
    disk = r <= 1.0
    # shading: a lit dome, a darker rim and a raised inner ring
    light_dir = np.array([-0.5, -0.5])
    dome = 0.55 + 0.25 * (1 - r**2).clip(0) ** 0.5
    dome += 0.12 * (dy * light_dir[0] + dx * light_dir[1]) / radius[:, None, None] * -0.5
    ring = np.exp(-(((r - 0.62) / 0.05) ** 2)) * 0.12
    rim = np.clip((r - 0.88) / 0.12, 0, 1) * -0.25
    lum = dome + ring + rim + 0.02 * _smooth_noise(rng, n, size, 5)
    lum = lum * rng.uniform(0.93, 1.07, size=(n, 1, 1))
    obj_colour = np.array([0.80, 0.84, 0.92])
    bg_colour = np.array([0.16, 0.17, 0.18])
    bg = bg_colour * rng.uniform(0.9, 1.1, size=(n, 1, 1, 1))
    # soft edge over about one pixel, to avoid aliasing
    edge = np.clip((1.0 - r) * radius[:, None, None] + 0.5, 0, 1)[..., None]
    images = edge * lum[..., None] * obj_colour + (1 - edge) * bg
    images += 0.012 * rng.standard_normal(images.shape, dtype=np.float32)
    geometry = np.stack([cy, cx, radius], axis=1)
    return images, disk, bg_colour, geometry


def _blob(rng, yy, xx, cy, cx, radius):
    """An irregular blob: a disk whose radius wobbles with the angle."""
    theta = np.arctan2(yy - cy, xx - cx)
    wobble = np.zeros_like(theta)
    for k in (2, 3, 5):
        wobble += rng.uniform(0.04, 0.12) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(yy - cy, xx - cx) <= radius * (1 + wobble)


def _draw_defect(rng, image, support, kind, background, geometry, side):
    """Draw one defect in place on ``image`` (H, W, 3); return its mask (H, W) bool."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # a centre: inside the object (or anywhere for textures), away from the border
    if geometry is not None:
        cy0, cx0, radius = geometry
        rho = radius * np.sqrt(rng.uniform(0, 0.45**2))
        phi = rng.uniform(0, 2 * np.pi)
        cy, cx = cy0 + rho * np.sin(phi), cx0 + rho * np.cos(phi)
    else:
        cy = rng.uniform(0.2, 0.8) * h
        cx = rng.uniform(0.2, 0.8) * w
    if kind == "scratch":
        length = rng.uniform(0.12, 0.18) * side
        width = max(0.02 * side, 1.5)
        angle = rng.uniform(0, np.pi)
        ey, ex = np.sin(angle) * length / 2, np.cos(angle) * length / 2
        # distance to the segment (cy - ey, cx - ex) -> (cy + ey, cx + ex), slightly curved
        t = ((yy - cy) * ey + (xx - cx) * ex) / (ey**2 + ex**2)
        t = np.clip(t, -1, 1)
        bend = 0.08 * length * (1 - t**2)
        py = cy + t * ey - np.cos(angle) * bend
        px = cx + t * ex + np.sin(angle) * bend
        mask = np.hypot(yy - py, xx - px) <= width / 2
        dark = rng.uniform() < (0.5 if geometry is None else 0.75)
        colour = np.array([0.05, 0.05, 0.06]) if dark else np.array([1.0, 1.0, 0.97])
        alpha = 0.9
    elif kind == "spot":
        radius = rng.uniform(0.04, 0.07) * side
        mask = _blob(rng, yy, xx, cy, cx, radius)
        palette = np.array([[0.62, 0.06, 0.05], [0.06, 0.40, 0.08], [0.08, 0.07, 0.06],
                            [0.12, 0.16, 0.75]])
        colour = palette[rng.integers(len(palette))]
        alpha = 0.85
    elif kind == "missing":
        if geometry is not None:
            # a bite out of the disk's edge
            cy0, cx0, radius = geometry
            phi = rng.uniform(0, 2 * np.pi)
            cy = cy0 + 0.95 * radius * np.sin(phi)
            cx = cx0 + 0.95 * radius * np.cos(phi)
            mask = _blob(rng, yy, xx, cy, cx, rng.uniform(0.09, 0.12) * side) & support
        else:
            mask = _blob(rng, yy, xx, cy, cx, rng.uniform(0.05, 0.08) * side)
        colour = np.asarray(background)
        alpha = 1.0
    else:  # pragma: no cover - checked by the caller
        raise ValueError(kind)
    image[mask] = (1 - alpha) * image[mask] + alpha * colour
    image[mask] += rng.normal(0.0, 0.012, size=image[mask].shape)
    return mask


def make_synthetic_defects(
    n_images=12,
    n_anomalous=3,
    image_size=128,
    kind="texture",
    defects=_DEFECT_KINDS,
    random_state=None,
):
    """A small synthetic batch of industrial images with defects and their masks.

    Normal images are a woven texture (``kind="texture"``) or a shaded metal
    disk, a "bottle top", on a uniform background (``kind="object"``), with a
    small random shift, lighting change and noise per image. Anomalous images
    carry one defect each, at a random position: a thin dark or bright
    ``"scratch"``, a coloured ``"spot"`` (stain), or a ``"missing"`` part (a
    hole in the texture, a bite out of the disk's edge). Defects span about 5
    to 15 % of the image side, enough for a human or a ViT to see them.

    Parameters
    ----------
    n_images : int, default=12
        Number of images.
    n_anomalous : int, default=3
        Number of anomalous images among them, at random positions in the batch.
    image_size : int or (int, int), default=128
        Side, or (height, width), of the images; at least 16.
    kind : {"texture", "object"}, default="texture"
        The product shown.
    defects : sequence of {"scratch", "spot", "missing"}, default=all three
        The defect kinds, used in turn (shuffled) over the anomalous images.
    random_state : int, numpy.random.Generator, RandomState or None, default=None
        Seed: the same seed gives the same batch.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``images`` (n_images, H, W, 3) uint8, ``masks`` (n_images, H, W) uint8
        in {0, 1}, ``labels`` (n_images,) int (1 = anomalous), ``defect_types``
        (list of str: ``"good"``, ``"scratch"``, ``"spot"``, ``"missing"``) and
        ``kind``.

    Examples
    --------
    >>> from sklearn_musc.datasets import make_synthetic_defects
    >>> data = make_synthetic_defects(n_images=6, n_anomalous=2, image_size=64,
    ...                               kind="object", random_state=0)
    >>> data.images.shape, data.masks.shape, int(data.labels.sum())
    ((6, 64, 64, 3), (6, 64, 64), 2)
    >>> bool((data.masks.reshape(6, -1).max(axis=1) == data.labels).all())
    True
    """
    n_images = int(n_images)
    n_anomalous = int(n_anomalous)
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    if not 0 <= n_anomalous <= n_images:
        raise ValueError(f"n_anomalous must lie in [0, n_images={n_images}], got {n_anomalous}")
    size = _check_size(image_size)
    if min(size) < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size!r}")
    if kind not in ("texture", "object"):
        raise ValueError(f"kind must be 'texture' or 'object', got {kind!r}")
    if isinstance(defects, str):
        defects = (defects,)
    defects = tuple(defects)
    unknown = [d for d in defects if d not in _DEFECT_KINDS]
    if not defects or unknown:
        raise ValueError(f"defects must be a non-empty subset of {_DEFECT_KINDS}, got {defects!r}")
    rng = _as_generator(random_state)

    if kind == "texture":
        images, support, background, geometry = _texture_batch(rng, n_images, size)
    else:
        images, support, background, geometry = _object_batch(rng, n_images, size)

    anomalous = np.sort(rng.choice(n_images, size=n_anomalous, replace=False))
    cycle = [defects[i % len(defects)] for i in range(n_anomalous)]
    order = rng.permutation(n_anomalous)
    kinds = [cycle[j] for j in order]
    masks = np.zeros((n_images,) + size, dtype=np.uint8)
    defect_types = ["good"] * n_images
    for index, defect in zip(anomalous, kinds):
        geom = None if geometry is None else geometry[index]
        mask = _draw_defect(
            rng, images[index], support[index], defect, background, geom, min(size)
        )
        masks[index] = mask
        defect_types[index] = defect
    labels = np.zeros(n_images, dtype=np.int64)
    labels[anomalous] = 1
    images = np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)
    return Bunch(images=images, masks=masks, labels=labels, defect_types=defect_types, kind=kind)


def _as_generator(random_state):
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None or isinstance(random_state, (int, np.integer)):
        return np.random.default_rng(random_state)
    state = check_random_state(random_state)  # a RandomState: derive a seed from it
    return np.random.default_rng(state.randint(np.iinfo(np.int32).max))


def save_synthetic_defects(directory, data=None, overwrite=False, **kwargs):
    """Write a synthetic batch as PNGs in the MVTec AD layout of one category.

    Parameters
    ----------
    directory : str or path-like
        The category folder ``ROOT/<category>``: images go to
        ``directory/test/<defect>/NNN.png`` and masks of anomalous images to
        ``directory/ground_truth/<defect>/NNN_mask.png``, numbered from 000 in
        each defect type in the batch's order. ``load_mvtec(ROOT, category)``
        reads them back (in its own order: ``good`` first).
    data : sklearn.utils.Bunch, optional
        The output of :func:`make_synthetic_defects`; None draws one with
        ``**kwargs``.
    overwrite : bool, default=False
        Whether ``directory/test`` and ``directory/ground_truth`` may already
        exist; if True they are deleted first.
    **kwargs
        Passed to :func:`make_synthetic_defects` when ``data`` is None.

    Returns
    -------
    result : sklearn.utils.Bunch
        ``paths`` and ``mask_paths`` (None for normal images) of the files
        written, in the batch's order, ``root`` (the parent of ``directory``),
        ``category`` (its name) and ``data`` (the batch).

    Raises
    ------
    FileExistsError
        If the folders exist and ``overwrite`` is False.

    Examples
    --------
    >>> import tempfile
    >>> from sklearn_musc.datasets import load_mvtec, save_synthetic_defects
    >>> root = tempfile.mkdtemp()
    >>> saved = save_synthetic_defects(f"{root}/fabric", n_images=4, n_anomalous=1,
    ...                                image_size=32, random_state=0)
    >>> len(load_mvtec(saved.root, saved.category).paths)
    4
    """
    if data is None:
        data = make_synthetic_defects(**kwargs)
    elif kwargs:
        raise TypeError(f"pass either data or generator arguments, not both: {sorted(kwargs)}")
    directory = Path(directory)
    test_dir = directory / "test"
    gt_dir = directory / "ground_truth"
    existing = [p for p in (test_dir, gt_dir) if p.exists()]
    if existing:
        if not overwrite:
            raise FileExistsError(
                f"{', '.join(str(p) for p in existing)} already exist; pass overwrite=True "
                "to replace them"
            )
        for p in existing:
            shutil.rmtree(p)
    counters = {}
    paths, mask_paths = [], []
    for image, mask, defect in zip(data["images"], data["masks"], data["defect_types"]):
        number = counters.get(defect, 0)
        counters[defect] = number + 1
        image_path = test_dir / defect / f"{number:03d}.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(image_path)
        paths.append(str(image_path))
        if defect == "good":
            mask_paths.append(None)
            continue
        mask_path = gt_dir / defect / f"{number:03d}_mask.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255).save(mask_path)
        mask_paths.append(str(mask_path))
    return Bunch(
        paths=paths,
        mask_paths=mask_paths,
        root=str(directory.resolve().parent),
        category=directory.resolve().name,
        data=data,
    )

