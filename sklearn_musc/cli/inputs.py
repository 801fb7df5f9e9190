"""Collecting and checking the input images of the command line.

Everything here runs before any model does, so that a bad folder or an
unreadable file is reported at once:

* :func:`collect_images` walks a folder for image files (the library's
  :data:`~sklearn_musc.images.IMAGE_SUFFIXES`), skipping hidden files and
  folders (``.ipynb_checkpoints/``, macOS ``._x.png`` sidecars, ...), the
  output folder and any folder that holds an earlier run's outputs.
* :func:`check_readable` opens every file cheaply (header, PIL ``verify``, a
  reduced decode of JPEGs, the EXIF orientation as the reader applies it) and
  returns the unreadable ones with the reason.
* :func:`display_name` is the name of an image in every output: its path
  relative to the input folder, POSIX separators, undecodable bytes replaced.
* :func:`collect_samples` pairs rgb images with their organized point clouds
  (MVTec 3D-AD's ``rgb/`` and ``xyz/`` folders, or an image and an xyz TIFF
  of the same stem), and :func:`check_sample` reads both before any model
  runs (finite coordinates, at least one point, the rgb image's size).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..images import IMAGE_SUFFIXES, upright
from .errors import InputError

__all__ = ["RUN_MANIFEST", "XYZ_SUFFIXES", "Sample", "Unreadable", "check_readable", "check_sample",
           "collect_images", "collect_samples", "display_name"]

#: A hidden file in every output folder, listing the files the run wrote. A
#: folder holding it is never read as input.
RUN_MANIFEST = ".sklearn-musc-run.json"


@dataclass(frozen=True)
class Unreadable:
    """An image file that cannot be read, and why."""

    path: Path
    reason: str


def _is_hidden(name):
    return name.startswith(".")


def display_name(path, root):
    """``path`` relative to ``root``, with "/" separators, as valid UTF-8 text.

    File names that are not valid UTF-8 (bytes the file system decoded with
    surrogate escapes) get U+FFFD in place of the bad bytes, so they can be
    written to CSV, JSON and HTML.
    """
    rel = Path(path).relative_to(root).as_posix()
    return os.fsencode(rel).decode("utf-8", "replace")


def collect_images(root, out=None):
    """Image files under ``root``, sorted by their display names.

    Parameters
    ----------
    root : path
        The input folder.
    out : path, optional
        The output folder; never read, even when it lies inside ``root``.

    Returns
    -------
    paths : list of pathlib.Path
    """
    root = Path(root)
    if not root.exists():
        raise InputError(f"input folder {root} does not exist")
    if not root.is_dir():
        raise InputError(f"input {root} is not a folder; give the folder that holds the images")
    out = Path(out).resolve() if out is not None else None
    if out is not None and out == root.resolve():
        raise InputError(f"--out {root} is the input folder itself; give a separate output folder")
    found = []
    for folder, dirs, files in os.walk(root, onerror=_raise_walk_error):
        here = Path(folder)
        kept = []
        for d in sorted(dirs):
            sub = here / d
            if _is_hidden(d) or (out is not None and sub.resolve() == out):
                continue
            if (sub / RUN_MANIFEST).is_file():  # the outputs of an earlier run
                continue
            kept.append(d)
        dirs[:] = kept
        for name in files:
            if _is_hidden(name) or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            path = here / name
            if path.is_file():
                found.append(path)
    found.sort(key=lambda p: display_name(p, root))
    return found


def _raise_walk_error(exc):
    raise InputError(f"cannot list {exc.filename}: {exc.strerror}")


def check_readable(paths):
    """The files of ``paths`` that cannot be read as images, with the reason.

    Cheap: the header is parsed and PIL's ``verify`` run (for PNG it checks
    every chunk's CRC, so a truncated file fails); JPEGs are decoded at a
    reduced scale (which finds truncated data), other formats decoded fully;
    the EXIF orientation is applied by the reader's own step, so a malformed
    one is found here and not halfway through a run.

    Returns
    -------
    unreadable : list of Unreadable
    """
    bad = []
    for path in paths:
        reason = _why_unreadable(path)
        if reason is not None:
            bad.append(Unreadable(path, reason))
    return bad


def _why_unreadable(path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large photos are fine
            with Image.open(path) as image:
                fmt = image.format
                image.verify()
            with Image.open(path) as image:
                if min(image.size) < 1:
                    return f"the image is empty ({image.size[0]} x {image.size[1]})"
                if fmt == "JPEG":
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
                upright(image, path)
    except PermissionError:
        return "permission denied"
    except Image.DecompressionBombError as exc:
        return f"too large for PIL's decompression-bomb limit ({exc})"
    except UnidentifiedImageError:
        return "not an image PIL can read (unknown format, or not an image at all)"
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as exc:
        return f"cannot be decoded ({type(exc).__name__}: {exc})"
    return None


# --------------------------------------------------------------------------- 3D samples

#: Suffixes of the organized point clouds (MVTec 3D-AD's ``xyz`` TIFFs).
XYZ_SUFFIXES = (".tiff", ".tif")


@dataclass(frozen=True)
class Sample:
    """One rgb image and its organized point cloud (None when only the rgb image is used)."""

    rgb: Path
    xyz: Path | None
    name: str
    xyz_name: str | None


def _is_cloud_tiff(path):
    """Whether a TIFF holds an organized point cloud: floating-point values of shape (H, W, 3)."""
    try:
        import tifffile

        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            shape, dtype = tuple(series.shape), series.dtype
    except Exception:  # noqa: BLE001 - not readable as a cloud: checked as an image
        return False
    return len(shape) == 3 and shape[-1] == 3 and dtype.kind == "f"


def collect_samples(root, out=None, need_xyz=True):
    """The (rgb, xyz) samples under ``root``, or None when it holds no point cloud.

    The pairing rule, the same stem in one of two layouts:

    * MVTec 3D-AD: a folder ``xyz/`` beside a folder ``rgb/`` (e.g.
      ``test/cut/{rgb,xyz,gt}/``): ``rgb/000.png`` goes with ``xyz/000.tiff``;
      the ``gt/`` folder beside them holds ground truth and is never read;
    * anywhere else: a TIFF of floating-point values of shape (H, W, 3) is a
      point cloud, and goes with the image of the same stem in its folder
      (``part7.png`` with ``part7.tiff``).

    Once ``root`` holds a point cloud, every rgb image needs its cloud and
    every cloud its rgb image (``need_xyz=False``: images without a cloud
    are kept, for rgb-only scoring): a missing file is an InputError naming
    the file that was expected. Hidden files, the output folder and earlier
    runs' outputs are skipped as by :func:`collect_images`.

    Returns
    -------
    samples : list of Sample or None
        Sorted by the rgb image's display name.
    """
    root = Path(root)
    files = collect_images(root, out)
    xyz_dirs = {p.parent for p in files if p.parent.name == "xyz" and p.suffix.lower() in XYZ_SUFFIXES}
    clouds, images = {}, {}  # (folder of the sample, stem) -> paths
    for path in files:
        folder = path.parent
        if folder.parent / "xyz" in xyz_dirs and folder != folder.parent / "xyz":
            if folder.name == "gt":
                continue  # ground truth beside the clouds
            if folder.name == "rgb":
                images.setdefault((folder.parent, path.stem), []).append(path)
                continue
        if folder in xyz_dirs:
            if path.suffix.lower() in XYZ_SUFFIXES:
                clouds.setdefault((folder.parent, path.stem), []).append(path)
                continue
        elif path.suffix.lower() in XYZ_SUFFIXES and _is_cloud_tiff(path):
            clouds.setdefault((folder, path.stem), []).append(path)
            continue
        images.setdefault((folder, path.stem), []).append(path)
    if not clouds:
        return None
    samples = []
    for key in sorted(set(clouds) | set(images), key=lambda k: display_name((images.get(k) or clouds[k])[0], root)):
        rgb, xyz = _one(images, key, root), _one(clouds, key, root)
        if rgb is None:
            where = key[0] / "rgb" if key[0] / "xyz" in xyz_dirs else key[0]
            raise InputError(f"point cloud {display_name(xyz, root)} has no rgb image: expected "
                             f"{display_name(where, root)}/{key[1]}.png (or another image suffix)")
        if xyz is None and need_xyz:
            where = key[0] / "xyz" if key[0] / "xyz" in xyz_dirs else key[0]
            raise InputError(f"image {display_name(rgb, root)} has no point cloud: expected "
                             f"{display_name(where, root)}/{key[1]}.tiff (an organized xyz TIFF)")
        samples.append(Sample(rgb, xyz, display_name(rgb, root), None if xyz is None else display_name(xyz, root)))
    return samples


def _one(found, key, root):
    """The one file of a sample's key; two of one stem are ambiguous."""
    paths = found.get(key)
    if paths is None:
        return None
    if len(paths) > 1:
        raise InputError(f"{display_name(paths[0], root)} and {display_name(paths[1], root)} have the same stem: "
                         "which one belongs to the sample is ambiguous; rename one")
    return paths[0]


def check_sample(sample):
    """Why a sample cannot be scored (its rgb image or its point cloud), or None.

    The rgb image as :func:`check_readable`; the cloud read whole
    (:func:`~sklearn_musc.datasets.read_xyz`: shape (H, W, 3), finite
    coordinates, at least one point) and of the rgb image's size, since
    they are registered pixel by pixel.
    """
    from ..datasets import read_xyz
    from ..images import read_image_size

    reason = _why_unreadable(sample.rgb)
    if reason is not None:
        return f"cannot read image {sample.name}: {reason}"
    if sample.xyz is None:
        return None
    try:
        cloud_size = read_xyz(sample.xyz, sample.xyz_name).shape[:2]
    except ImportError as exc:
        return str(exc).replace(repr(str(sample.xyz)), sample.xyz_name)
    except (ValueError, OSError) as exc:
        text = str(exc).replace(repr(str(sample.xyz)), repr(sample.xyz_name)).splitlines()[0]
        return f"point cloud {text}" if text.startswith(repr(sample.xyz_name)) else text
    image_size = tuple(read_image_size(sample.rgb))
    if image_size != tuple(cloud_size):
        return (f"image {sample.name} is {image_size[0]} x {image_size[1]} but its point cloud {sample.xyz_name} "
                f"is {cloud_size[0]} x {cloud_size[1]}; they must be registered pixel by pixel")
    return None
