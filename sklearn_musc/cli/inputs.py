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
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..images import IMAGE_SUFFIXES, upright
from .errors import InputError

__all__ = ["RUN_MANIFEST", "collect_images", "check_readable", "display_name",
           "Unreadable"]

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
