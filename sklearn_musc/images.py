"""Reading images and masks: one decoding policy for every image the library sees.

Whether the estimators read it, a dataset loader returns it, a plot draws it
or the command line writes an overlay of it, an image is decoded here, by one
policy. Where the model input lies on an image, and how maps and masks go
between the two, is :mod:`sklearn_musc.geometry`.

:func:`load_image` turns every input into one of two forms, decided by its
bit depth:

* an 8-bit ``PIL.Image`` in mode ``"RGB"``: files and PIL images of 8 bits per
  channel, and ``uint8`` and ``bool`` arrays. They are resized by PIL exactly
  as the backbones' own transforms (open_clip, timm) resize them.
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
* ``bool`` arrays are black (False) and white (True);
* the EXIF orientation of files and PIL images is applied
  (:func:`PIL.ImageOps.exif_transpose`), so the image is seen upright.

:func:`read_rgb` gives the same pixels as an (H, W, 3) array (8-bit or
float), :func:`as_rgb8` brings either form to 8 bits, :func:`read_image_size`
reads the upright size from a file's header and :func:`read_mask` the grey
values of a ground-truth mask (upright too, so it lies on its image).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFiles",
    "as_image_list",
    "as_rgb8",
    "load_image",
    "read_image_size",
    "read_mask",
    "read_rgb",
]

#: File suffixes read as images (lower case), by the dataset loaders and the
#: command line alike. GIF and WebP are read as their first frame.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ORIENTATION = 0x0112  # the EXIF tag
_QUARTER_TURNS = (5, 6, 7, 8)  # orientations that swap height and width
_BAND_ROWS = 512  # rows converted at once from float to 8 bits: bounds the temporary memory


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


def load_image(item, source=None):
    """Decode one image into an 8-bit RGB PIL image or a float RGB array.

    The one decoder of the library (see the module's notes for the
    conversions): the estimators, the dataset loaders, the plots and the
    command line all read images through it.

    Parameters
    ----------
    item : str, pathlib.Path, PIL.Image.Image or ndarray
        The image.
    source : str, optional
        Its name, used in error messages; by default the path, or
        ``"<PIL image>"`` / ``"<array>"``.

    Returns
    -------
    image : PIL.Image.Image (mode "RGB") or ndarray of shape (H, W, 3), float32
        The image, upright, alpha dropped.
    size : (int, int)
        Its (height, width) in pixels.

    Raises
    ------
    FileNotFoundError
        If a path names no file.
    ValueError
        If the file cannot be decoded, or the array has an unsupported shape,
        dtype or value range; the message names ``source``.

    Examples
    --------
    >>> import numpy as np
    >>> image, size = load_image(np.zeros((20, 30), dtype=np.uint8))
    >>> image.mode, size
    ('RGB', (20, 30))
    >>> image, size = load_image(np.zeros((20, 30, 3), dtype=np.uint16))
    >>> image.dtype, image.shape
    (dtype('float32'), (20, 30, 3))
    """
    return _decode(item, source, np.float32)


def _decode(item, source, float_dtype):
    """:func:`load_image`, with the float images in ``float_dtype``."""
    if source is None:
        source = _default_source(item)
    if isinstance(item, np.ndarray):
        image = _from_array(item, source, float_dtype)
    else:
        if isinstance(item, (str, os.PathLike)):
            item = _open(item)
        image = _from_pil(item, source, float_dtype)
    if isinstance(image, Image.Image):
        size = (image.height, image.width)
    else:
        size = image.shape[:2]
    if min(size) < 1:
        raise ValueError(f"image {source} is empty (size {size})")
    return image, (int(size[0]), int(size[1]))


def as_rgb8(image):
    """An 8-bit RGB PIL image from what :func:`load_image` returns.

    Float images are rounded to the nearest of 256 levels. They are converted
    in bands of rows, so that a large photo needs no full-size temporary.

    Parameters
    ----------
    image : PIL.Image.Image (mode "RGB") or ndarray of shape (H, W, 3), float in [0, 1]
        An image as :func:`load_image` returns it.

    Returns
    -------
    image : PIL.Image.Image, mode "RGB"
        ``image`` itself when it is already one.

    Examples
    --------
    >>> import numpy as np
    >>> image, _ = load_image(np.full((2, 3), 0.5))
    >>> np.asarray(as_rgb8(image))[0, 0].tolist()
    [128, 128, 128]
    """
    if isinstance(image, Image.Image):
        return image
    out = np.empty(image.shape[:2] + (3,), dtype=np.uint8)
    for y in range(0, image.shape[0], _BAND_ROWS):
        band = image[y : y + _BAND_ROWS]
        out[y : y + _BAND_ROWS] = np.rint(np.clip(band, 0.0, 1.0) * 255.0)
    return Image.fromarray(out)


def read_rgb(item, dtype=np.uint8, source=None):
    """Decode one image into an (H, W, 3) array, as :func:`load_image` sees it.

    Parameters
    ----------
    item : str, pathlib.Path, PIL.Image.Image or array-like
        The image.
    dtype : numpy dtype, default=numpy.uint8
        ``uint8`` for 8-bit values (16-bit and float images are rounded, as
        :func:`as_rgb8` does), or a float dtype for values in [0, 1].
    source : str, optional
        Its name, used in error messages (see :func:`load_image`).

    Returns
    -------
    rgb : ndarray of shape (H, W, 3) and type ``dtype``
        A new array, upright, alpha dropped.

    Examples
    --------
    >>> import numpy as np
    >>> grey = np.array([[0, 255]], dtype=np.uint8)
    >>> read_rgb(grey).tolist()
    [[[0, 0, 0], [255, 255, 255]]]
    >>> read_rgb(grey, dtype=np.float64)[0, 1].tolist()
    [1.0, 1.0, 1.0]
    """
    dtype = np.dtype(dtype)
    if dtype != np.uint8 and dtype.kind != "f":
        raise ValueError(f"dtype must be uint8 or a float dtype, got {dtype}")
    if not isinstance(item, (str, os.PathLike, Image.Image)):
        item = np.asarray(item)
    if dtype == np.uint8:
        return np.array(as_rgb8(load_image(item, source)[0]), dtype=np.uint8)
    # float images are decoded in the precision asked for, not rounded to float32 first
    image, _ = _decode(item, source, dtype)
    if isinstance(image, Image.Image):
        return np.asarray(image, dtype=dtype) / dtype.type(255)
    return image


def read_image_size(path):
    """(height, width) of an image file, upright, from its header alone.

    The size :func:`load_image` gives, without decoding the pixels: an EXIF
    orientation that turns the image by 90 degrees swaps the two.

    Parameters
    ----------
    path : str or pathlib.Path
        The image file.

    Returns
    -------
    size : (int, int)

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> path = os.path.join(tempfile.mkdtemp(), "side.png")
    >>> exif = Image.Exif(); exif[0x0112] = 6  # to be shown turned by 90 degrees
    >>> Image.new("RGB", (40, 20)).save(path, exif=exif)
    >>> read_image_size(path)
    (40, 20)
    """
    with _open(path, decode=False) as image:
        size = (image.height, image.width)
        # PIL decodes a whole PNG to look for an eXIf chunk after the pixel
        # data; such files are rare, and not worth decoding every PNG here.
        if image.format == "PNG" and "exif" not in image.info:
            return size
        orientation = _orientation(image, str(path))
    return size[::-1] if orientation in _QUARTER_TURNS else size


def read_mask(path):
    """The grey values of a ground-truth mask file, upright.

    The file is opened and turned upright as :func:`load_image` does, so the
    mask lies on its image, and converted to 8-bit grey (PIL's
    ``convert("L")``). Which values count as anomalous is the caller's
    choice (e.g. ``read_mask(path) > 0``).

    Parameters
    ----------
    path : str or pathlib.Path
        The mask file.

    Returns
    -------
    values : ndarray of shape (H, W), uint8

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> path = os.path.join(tempfile.mkdtemp(), "mask.png")
    >>> Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).save(path)
    >>> read_mask(path).tolist()
    [[0, 255]]
    """
    image = upright(_open(path), str(path))
    return np.array(image.convert("L"), dtype=np.uint8)



def _default_source(item):
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    return "<PIL image>" if isinstance(item, Image.Image) else "<array>"


def _open(path, decode=True):
    """Open an image file; with ``decode``, decode it now, so a truncated file fails here, naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        image = Image.open(path)
        if decode:
            image.load()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError,
            Image.DecompressionBombError) as exc:
        raise ValueError(f"cannot read image file {path}: {exc}") from exc
    return image


def _orientation(image, source):
    """The EXIF orientation of a PIL image (1: upright)."""
    try:
        return image.getexif().get(_ORIENTATION, 1)
    except Exception as exc:  # a malformed EXIF block should not hide which image it was
        raise ValueError(f"cannot apply the EXIF orientation of image {source}: {exc}") from exc


def upright(image, source):
    """``image`` turned as its EXIF orientation says; ``image`` itself when it is upright."""
    # exif_transpose copies the image even when there is nothing to turn: call
    # it only for an orientation other than "upright", which saves a full-size
    # copy of every ordinary photo.
    if _orientation(image, source) in (1, None):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception as exc:
        raise ValueError(f"cannot apply the EXIF orientation of image {source}: {exc}") from exc


def _from_pil(image, source, float_dtype):
    image = upright(image, source)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        return _gray_to_rgb(np.asarray(image).astype(float_dtype) / 65535.0)
    if mode == "I":
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError(
                f"image {source} is a 32-bit integer image with values in "
                f"[{values.min()}, {values.max()}]; only 16-bit values [0, 65535] are supported"
            )
        return _gray_to_rgb(values.astype(float_dtype) / 65535.0)
    if mode == "F":
        return _gray_to_rgb(_check_float(np.asarray(image, dtype=float_dtype), source))
    if mode == "P" and "transparency" in image.info:
        # PIL warns when a palette with transparency goes straight to RGB.
        image = image.convert("RGBA")
    return image.convert("RGB")


def _from_array(array, source, float_dtype):
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
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype == np.uint8:
        image = Image.fromarray(np.ascontiguousarray(array))
        return image if image.mode == "RGB" else image.convert("RGB")
    if array.dtype == np.uint16:
        return _gray_to_rgb(array.astype(float_dtype) / 65535.0)
    if array.dtype.kind == "f":
        return _gray_to_rgb(_check_float(array.astype(float_dtype), source))
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
    return np.ascontiguousarray(values)
