"""Reading images of any common kind and preprocessing them for a ViT.

Every input is turned into one of two forms, decided by its bit depth:

* an 8-bit ``PIL.Image`` in mode ``"RGB"``: files and PIL images of 8 bits per
  channel, and ``uint8`` arrays. They are resized by PIL exactly as the
  backbones' own transforms (open_clip, timm) resize them.
* a float32 array of shape (H, W, 3) with values in [0, 1]: 16-bit and
  floating-point images, which would lose precision as 8-bit. They are resized
  channel by channel by PIL in its 32-bit float mode.

Conversions:

* grayscale is repeated over the three channels; palette images are expanded;
* alpha channels are dropped (the colour values are kept as stored, not
  composited), as the backbones' ``convert("RGB")`` does;
* 16-bit values (``uint16`` arrays, PIL modes ``"I;16*"`` and ``"I"``) are
  divided by 65535; ``"I"`` values outside [0, 65535] are an error;
* float values must lie in [0, 1]; NaN, infinity or values outside are an error;
* the EXIF orientation of files and PIL images is applied
  (:func:`PIL.ImageOps.exif_transpose`), so the image is seen upright.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_SUFFIXES", "ImageFiles", "as_image_list", "crop_box", "load_image", "paste_to_original",
           "preprocess", "resize_crop_geometry"]

#: File suffixes read as images (lower case), by the dataset loaders and the
#: command line alike. GIF and WebP are read as their first frame.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageFiles(Sequence):
    """Image file paths that hash by their files' size and modification time.

    ``Pipeline(memory=...)`` (joblib) keys its cache on a hash of each step's
    input. A list of paths hashes by the names only, so replacing an image
    file on disk would be answered from the cache with the old file's tokens.
    An ``ImageFiles`` hashes (and pickles) with each file's size and
    modification time as they are at hashing time, so a changed file gives a
    new key and is computed again. Use it wherever paths go into a cached
    pipeline; everything that takes a list of paths takes it.

    Parameters
    ----------
    paths : iterable of str or pathlib.Path
        The image files.

    Examples
    --------
    >>> import joblib, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
    >>> _ = open(path, "wb").write(b"one")
    >>> files = ImageFiles([path])
    >>> before = joblib.hash(files)
    >>> _ = open(path, "wb").write(b"other")
    >>> joblib.hash(files) == before, list(files) == [path]
    (False, True)
    """

    def __init__(self, paths):
        if isinstance(paths, (str, os.PathLike)):
            raise TypeError("ImageFiles takes a collection of paths; wrap a single path in a list")
        self._paths = tuple(os.fspath(p) for p in paths)

    def __len__(self):
        return len(self._paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ImageFiles(self._paths[index])
        return self._paths[index]

    def __repr__(self):
        return f"ImageFiles(<{len(self._paths)} files>)"

    def fingerprint(self):
        """(path, size in bytes, modification time in ns) of each file; None for a missing one."""
        out = []
        for path in self._paths:
            try:
                st = os.stat(path)
                out.append((path, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((path, None, None))
        return tuple(out)

    def __reduce__(self):
        return _rebuild_image_files, (self._paths, self.fingerprint())


def _rebuild_image_files(paths, fingerprint=None):
    return ImageFiles(paths)


def as_image_list(X):
    """Split the input collection into a list of images and a name for each.

    Nothing is decoded here, so a list of paths stays cheap.

    Parameters
    ----------
    X : sequence of (str, pathlib.Path, PIL.Image.Image, ndarray) or ndarray
        The images. A single ndarray must have shape (n_images, H, W, C).

    Returns
    -------
    items : list
        One entry per image.
    sources : list of str
        The path, or ``"<array i>"`` / ``"<PIL i>"`` for in-memory images.
    """
    if isinstance(X, (str, os.PathLike, Image.Image)):
        raise TypeError(
            "X must be a collection of images; wrap a single image in a list, e.g. [image]"
        )
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim != 4 or X.shape[-1] not in (1, 3, 4):
            raise ValueError(
                "an array of images must have shape (n_images, height, width, channels) "
                f"with 1, 3 or 4 channels, got shape {X.shape}; pass other layouts as a "
                "list of (height, width[, channels]) arrays"
            )
        items = list(X)
    else:
        try:
            items = list(X)
        except TypeError:
            raise TypeError(
                f"X must be a sequence of image paths, PIL images or arrays, got {type(X).__name__}"
            ) from None
    if not items:
        raise ValueError("X holds no images")
    sources = []
    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            sources.append(str(item))
        elif isinstance(item, Image.Image):
            sources.append(f"<PIL {i}>")
        elif isinstance(item, np.ndarray):
            sources.append(f"<array {i}>")
        else:
            raise TypeError(
                f"image {i} has unsupported type {type(item).__name__}; expected a path, "
                "a PIL image or a numpy array"
            )
    return items, sources


def load_image(item, source):
    """Decode one image into an 8-bit RGB PIL image or a float RGB array.

    Parameters
    ----------
    item : str, pathlib.Path, PIL.Image.Image or ndarray
        The image.
    source : str
        Its name, used in error messages.

    Returns
    -------
    image : PIL.Image.Image (mode "RGB") or ndarray of shape (H, W, 3), float32
        The image, upright, alpha dropped.
    size : (int, int)
        Its (height, width) in pixels.
    """
    if isinstance(item, np.ndarray):
        image = _from_array(item, source)
    else:
        if isinstance(item, (str, os.PathLike)):
            item = _open(Path(item))
        image = _from_pil(item, source)
    if isinstance(image, Image.Image):
        size = (image.height, image.width)
    else:
        size = image.shape[:2]
    if min(size) < 1:
        raise ValueError(f"image {source} is empty (size {size})")
    return image, (int(size[0]), int(size[1]))


def _open(path):
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        image = Image.open(path)
        image.load()  # decode now, so a truncated file fails here, naming it
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError,
            Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image file {path}: {exc}") from exc
    return image


def _from_pil(image, source):
    try:
        # exif_transpose copies the image even when there is nothing to turn:
        # call it only for an orientation other than "upright" (1), which saves
        # a full-size copy of every ordinary photo.
        if image.getexif().get(0x0112, 1) not in (1, None):
            image = ImageOps.exif_transpose(image)
    except Exception as exc:  # a malformed EXIF block should not hide which image it was
        raise ValueError(f"cannot apply the EXIF orientation of image {source}: {exc}") from exc
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        return _gray_to_rgb(np.asarray(image).astype(np.float32) / 65535.0)
    if mode == "I":
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(
                f"image {source} is a 32-bit integer image with values in "
                f"[{values.min()}, {values.max()}]; only 16-bit values [0, 65535] are supported"
            )
        return _gray_to_rgb(values.astype(np.float32) / 65535.0)
    if mode == "F":
        return _gray_to_rgb(_check_float(np.asarray(image, dtype=np.float32), source))
    if mode == "P" and "transparency" in image.info:
        # PIL warns when a palette with transparency goes straight to RGB.
        image = image.convert("RGBA")
    return image.convert("RGB")


def _from_array(array, source):
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ValueError(
            f"image {source} must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
            f"got {array.shape}"
        )
    if array.ndim == 3:
        array = array[..., :3]  # drop alpha
    if array.size == 0:
        raise ValueError(f"image {source} is empty (shape {array.shape})")
    if array.dtype == np.uint8:
        image = Image.fromarray(np.ascontiguousarray(array))
        return image if image.mode == "RGB" else image.convert("RGB")
    if array.dtype == np.uint16:
        return _gray_to_rgb(array.astype(np.float32) / 65535.0)
    if array.dtype.kind == "f":
        return _gray_to_rgb(_check_float(array.astype(np.float32), source))
    raise ValueError(
        f"image {source} has dtype {array.dtype}; use uint8, uint16 or floats in [0, 1]"
    )


def _check_float(values, source):
    if not np.isfinite(values).all():
        raise ValueError(f"image {source} contains NaN or infinity")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"float image {source} must have values in [0, 1], got [{low:g}, {high:g}]"
        )
    return values


def _gray_to_rgb(values):
    if values.ndim == 2:
        values = np.repeat(values[:, :, None], 3, axis=2)
    return np.ascontiguousarray(values, dtype=np.float32)


def resize_crop_geometry(original_size, target_size):
    """Where the resize and centre crop of :func:`preprocess` put an image.

    The image is scaled so that it covers the target (for a square target:
    its shorter side becomes the target size; the longer side is truncated to
    an int, as torchvision does), then the target is cut from the centre.

    Parameters
    ----------
    original_size : (int, int)
        (height, width) of the image.
    target_size : (int, int)
        (height, width) of the model input.

    Returns
    -------
    resized_size : (int, int)
        (height, width) after the resize.
    offset : (int, int)
        (top, left) of the crop in the resized image.
    """
    h, w = original_size
    th, tw = target_size
    if th * w >= tw * h:  # height is the binding side (th / h >= tw / w)
        rh, rw = th, max(tw, int(w * th / h))
    else:
        rh, rw = max(th, int(h * tw / w)), tw
    return (rh, rw), (int(round((rh - th) / 2.0)), int(round((rw - tw) / 2.0)))


def crop_box(original_size, target_size):
    """``(y0, y1, x0, x1)``: where the model input lies on the original image, in its pixels.

    The inverse view of :func:`resize_crop_geometry`, used to put maps and
    masks of the model input back on the image; never empty.
    """
    h0, w0 = original_size
    (rh, rw), (top, left) = resize_crop_geometry((h0, w0), target_size)
    # the resize scales each axis by rh/h0, rw/w0
    y0, y1 = (min(h0, max(0, round(v * h0 / rh))) for v in (top, top + target_size[0]))
    x0, x1 = (min(w0, max(0, round(v * w0 / rw))) for v in (left, left + target_size[1]))
    return y0, max(y1, y0 + 1), x0, max(x1, x0 + 1)


def paste_to_original(small, original_size, target_size, resample, fill):
    """An 8-bit ("L") image over the model input put back on the original image.

    Resized (PIL ``resample``, which antialiases when it shrinks) into the
    :func:`crop_box`; the borders the crop cut away are ``fill``, or the
    resized image's minimum for ``fill="min"`` (nothing unseen looks
    anomalous). 8 bits a pixel: an overlay or mask of a large photo stays
    small in memory.
    """
    h0, w0 = original_size
    y0, y1, x0, x1 = crop_box(original_size, target_size)
    inner = small.resize((x1 - x0, y1 - y0), resample)
    if fill == "min":
        fill = inner.getextrema()[0]
    full = Image.new("L", (w0, h0), int(fill))
    full.paste(inner, (x0, y0))
    return full


def preprocess(image, size, mean, std):
    """Resize (bicubic) to cover ``size``, centre-crop, scale to [0, 1], normalise.

    Parameters
    ----------
    image : PIL.Image.Image (mode "RGB") or ndarray of shape (H, W, 3), float32
        An image from :func:`load_image`.
    size : (int, int)
        (height, width) of the model input.
    mean, std : sequence of 3 floats
        Per-channel normalisation of the backbone.

    Returns
    -------
    tensor : torch.Tensor of shape (3, height, width), float32
    """
    if isinstance(image, Image.Image):
        original = (image.height, image.width)
    else:
        original = image.shape[:2]
    (rh, rw), (top, left) = resize_crop_geometry(original, size)
    box = (left, top, left + size[1], top + size[0])
    if isinstance(image, Image.Image):
        image = image.resize((rw, rh), Image.BICUBIC).crop(box)
        values = np.asarray(image, dtype=np.float32) / 255.0
    else:
        channels = []
        for c in range(3):
            plane = Image.fromarray(np.ascontiguousarray(image[:, :, c]))
            channels.append(np.asarray(plane.resize((rw, rh), Image.BICUBIC).crop(box)))
        # Bicubic overshoots; 8-bit images are clipped by PIL, so clip these alike.
        values = np.clip(np.stack(channels, axis=2), 0.0, 1.0)
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).permute(2, 0, 1)
    mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean) / std
