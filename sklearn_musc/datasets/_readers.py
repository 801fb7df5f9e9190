"""Readers of the dataset folder layouts (MVTec AD, VisA, BTAD, MVTec 3D-AD); see the package's notes."""

from __future__ import annotations

import csv
import os
import difflib
import re
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ..images import IMAGE_SUFFIXES, read_rgb

_LAYOUTS = {
    "mvtec": "ROOT/<category>/test/<defect>/NNN.png (MVTec AD)",
    "visa": "ROOT/<category>/Data/Images/{Normal,Anomaly}/*.JPG (VisA)",
    "btad": "ROOT/<category>/test/{ok,ko}/*.bmp (BTAD)",
    "mvtec3d": "ROOT/<category>/test/<defect>/{rgb,xyz,gt}/NNN.{png,tiff,png} (MVTec 3D-AD)",
}
_MARKERS = {
    "mvtec": ("test",),
    "visa": ("Data", "Images"),
    "btad": ("test",),
    "mvtec3d": ("test",),
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
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
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
        bunch.images = [read_rgb(p) for p in paths]  # the model's decoder: upright, 8-bit RGB
    return bunch


def _find_mask(folder, stem):
    """The mask file ``folder/stem.<image extension>``, .png preferred, or None."""
    for ext in IMAGE_SUFFIXES:
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
    dataset : {"mvtec", "visa", "btad", "mvtec3d"}, default="mvtec"
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
        Also read the images, as a list of (H, W, 3) uint8 RGB arrays,
        decoded as the model decodes them
        (:func:`~sklearn_musc.images.read_rgb`: upright by their EXIF
        orientation, 16-bit images rounded to 8 bits).

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
        Also read the images, as a list of (H, W, 3) uint8 RGB arrays,
        decoded as the model decodes them
        (:func:`~sklearn_musc.images.read_rgb`: upright by their EXIF
        orientation, 16-bit images rounded to 8 bits).

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
        Also read the images, as a list of (H, W, 3) uint8 RGB arrays,
        decoded as the model decodes them
        (:func:`~sklearn_musc.images.read_rgb`: upright by their EXIF
        orientation, 16-bit images rounded to 8 bits).

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


# --------------------------------------------------------------------------- MVTec 3D-AD

_XYZ_SUFFIXES = (".tiff", ".tif")


def _name(source):
    return "the point cloud" if source is None else repr(str(source))


def read_xyz(item, source=None):
    """Read one organized point cloud as an (H, W, 3) float32 array.

    Parameters
    ----------
    item : str, path-like or array-like
        An MVTec 3D-AD ``xyz`` TIFF (H x W x 3 floats, read with ``tifffile``)
        or an array of shape (H, W, 3). A pixel whose three coordinates are all
        0 has no point.
    source : str, optional
        A name for ``item`` in error messages (its path by default).

    Returns
    -------
    xyz : ndarray of shape (H, W, 3), float32
        A new array.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the array is not (H, W, 3), holds NaN or infinite coordinates, or
        has no point at all.

    Examples
    --------
    >>> import numpy as np
    >>> cloud = np.zeros((4, 5, 3)); cloud[1:3, 1:4] = (0.1, 0.2, 0.5)
    >>> read_xyz(cloud).shape
    (4, 5, 3)
    """
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        source = str(path) if source is None else source
        if not path.is_file():
            raise FileNotFoundError(f"point cloud file {str(path)!r} does not exist")
        try:
            import tifffile
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"reading {str(path)!r} needs tifffile: pip install 'sklearn-musc[3d]'"
            ) from exc
        try:
            array = tifffile.imread(str(path))
        except Exception as exc:
            raise ValueError(f"cannot read the point cloud {str(path)!r}: {exc}") from None
    else:
        array = np.asarray(item)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(
            f"{_name(source)} must be an organized point cloud of shape (H, W, 3), got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"{_name(source)} must hold real coordinates, got dtype {array.dtype}")
    array = np.array(array, dtype=np.float32)
    bad = ~np.isfinite(array)
    if bad.any():
        r, c = np.argwhere(bad.any(axis=-1))[0]
        raise ValueError(
            f"{_name(source)} has {int(bad.any(axis=-1).sum())} pixels with NaN or infinite coordinates "
            f"(first at row {r}, column {c}); mark missing points with 0, not NaN"
        )
    if not (array != 0).any(axis=-1).any():
        raise ValueError(f"{_name(source)} has no valid point (every pixel is 0)")
    return array


def _xyz_files(folder):
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _XYZ_SUFFIXES]
    return sorted(files, key=lambda p: _natural_key(p.name))


def load_mvtec3d(root, category, split="test"):
    """Samples (rgb, xyz, mask) and labels of one MVTec 3D-AD category.

    Parameters
    ----------
    root : str or path-like
        The MVTec 3D-AD root: ``ROOT/<category>/<split>/<defect>/{rgb,xyz,gt}/NNN.{png,tiff,png}``.
    category : str
        The category, e.g. ``"cable_gland"``.
    split : {"test", "validation", "train"}, default="test"
        Which split; the validation and train splits hold normal samples only.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``samples`` (``(rgb, xyz)`` path pairs, the input of
        :class:`~sklearn_musc.MultimodalTransformer`), ``paths`` (rgb images,
        list of str), ``xyz_paths`` (point clouds),
        ``mask_paths`` (None for normal samples), ``labels`` (1 = anomalous),
        ``defect_types``, ``category``, ``dataset`` (``"mvtec3d"``), ``split``
        and ``root``. Order as in :func:`load_mvtec`. Read masks with
        :func:`load_masks` and clouds with :func:`read_xyz` (or hand the
        paths to :class:`~sklearn_musc.pointcloud.PointCloudPatchTransformer`).

    Raises
    ------
    FileNotFoundError
        If a sample has no xyz or rgb file, an anomalous one no mask, or the
        split holds no sample.
    ValueError
        If ``category`` or ``split`` is not found.

    Examples
    --------
    >>> from sklearn_musc.datasets import load_mvtec3d
    >>> data = load_mvtec3d("mvtec_3d_anomaly_detection", "cable_gland")  # doctest: +SKIP
    >>> list(zip(data.paths, data.xyz_paths))[:1]  # doctest: +SKIP
    """
    if split not in ("test", "validation", "train"):
        raise ValueError(f"split must be 'test', 'validation' or 'train', got {split!r}")
    folder = _category_dir(root, category, "mvtec3d")
    split_dir = folder / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"category {str(category)!r} has no folder {str(split_dir)!r}")
    defect_dirs = sorted((p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         key=lambda p: _type_key(p.name))
    records = []
    for defect_dir in defect_dirs:
        defect = defect_dir.name
        rgb_files = {p.stem: p for p in _image_files(defect_dir / "rgb")} if (defect_dir / "rgb").is_dir() else {}
        xyz_files = {p.stem: p for p in _xyz_files(defect_dir / "xyz")}
        for stem in sorted(set(rgb_files) | set(xyz_files), key=_natural_key):
            if stem not in xyz_files:
                raise FileNotFoundError(
                    f"sample {str(rgb_files[stem])!r} has no point cloud: expected "
                    f"{str(defect_dir / 'xyz' / (stem + '.tiff'))!r}"
                )
            if stem not in rgb_files:
                raise FileNotFoundError(
                    f"point cloud {str(xyz_files[stem])!r} has no rgb image: expected "
                    f"{str(defect_dir / 'rgb' / (stem + '.png'))!r}"
                )
            mask = _find_mask(defect_dir / "gt", stem) if (defect_dir / "gt").is_dir() else None
            if defect == "good":
                mask = None  # the normal samples' masks are empty
            elif mask is None:
                raise FileNotFoundError(
                    f"no ground-truth mask for the anomalous sample {str(rgb_files[stem])!r}: expected "
                    f"{str(defect_dir / 'gt' / (stem + '.png'))!r}"
                )
            records.append((defect, rgb_files[stem], xyz_files[stem], mask))
    if not records:
        raise FileNotFoundError(
            f"no sample found under {str(split_dir)!r}: expected "
            "<split>/<defect>/{rgb,xyz,gt}/NNN.{png,tiff,png} (MVTec 3D-AD)"
        )
    return Bunch(
        samples=[(str(r[1]), str(r[2])) for r in records],
        paths=[str(r[1]) for r in records],
        xyz_paths=[str(r[2]) for r in records],
        mask_paths=[None if r[3] is None else str(r[3]) for r in records],
        labels=np.array([int(r[0] != "good") for r in records], dtype=np.int64),
        defect_types=[r[0] for r in records],
        category=str(category),
        dataset="mvtec3d",
        split=split,
        root=str(root),
    )
