"""MVTec 3D-AD: organized point clouds (xyz TIFF), rgb images and masks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._readers import _category_dir, _find_mask, _image_files, _natural_key, _type_key

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
