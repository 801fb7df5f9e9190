"""Reading images and masks, and the geometry between an image and the model input.

Every image the library sees, whether the estimators read it, a dataset
loader returns it, a plot draws it or the command line writes an overlay of
it, is decoded here, by one policy, and the resize and centre crop of the
model input is defined here once, with the functions that put maps and masks
through it in either direction.

Reading
-------
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

Geometry
--------
:func:`preprocess` resizes an image (bicubic) so that it covers the model
input and cuts the input from its centre; :func:`resize_crop_geometry` and
:func:`crop_box` say where the input lies on the image. :func:`masks_to_input`
takes ground-truth masks the same way (nearest neighbour, through
:func:`resize_mask`; a float map is resized by :func:`resize_map`), and
:func:`maps_to_original` and
:func:`masks_to_original` (with :func:`paste_to_original`) put what the model
produced back on the original images.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ._validation import check_size

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageFiles",
    "as_image_list",
    "as_rgb8",
    "crop_box",
    "load_image",
    "maps_to_original",
    "masks_to_input",
    "masks_to_original",
    "paste_to_original",
    "preprocess",
    "read_image_size",
    "read_mask",
    "read_rgb",
    "resize_crop_geometry",
    "resize_map",
    "resize_mask",
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
    image = _upright(_open(path), str(path))
    return np.array(image.convert("L"), dtype=np.uint8)


def resize_mask(mask, size):
    """Resize a binary mask with nearest-neighbour interpolation, so it stays binary.

    Parameters
    ----------
    mask : array-like of shape (h, w), or (h, w, channels) with 1, 3 or 4 channels
        Nonzero (or True) pixels are marked; of a mask with channels, the
        first is used.
    size : int or (int, int)
        The (height, width) wanted.

    Returns
    -------
    mask : ndarray of shape (height, width), bool

    Examples
    --------
    >>> import numpy as np
    >>> resize_mask(np.array([[0, 1], [0, 0]]), (2, 4)).astype(int).tolist()
    [[0, 0, 1, 1], [0, 0, 0, 0]]
    """
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] in (1, 3, 4):
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"a mask must have shape (h, w), got {mask.shape}")
    height, width = check_size(size, "size")
    mask = mask > 0
    if mask.shape == (height, width):
        return mask
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
    return np.asarray(resized) > 127


def resize_map(anomaly_map, size):
    """Resize a float anomaly map bilinearly (pixel centres aligned), e.g. onto its image.

    Parameters
    ----------
    anomaly_map : array-like of shape (h, w)
        Float values.
    size : int or (int, int)
        The (height, width) wanted.

    Returns
    -------
    anomaly_map : ndarray of shape (height, width), float64
        The map itself (as float64) when it already has that size.

    Examples
    --------
    >>> import numpy as np
    >>> resize_map(np.array([[0.0, 1.0]]), (1, 4)).round(2).tolist()
    [[0.0, 0.25, 0.75, 1.0]]
    """
    anomaly_map = np.asarray(anomaly_map, dtype=np.float64)
    if anomaly_map.ndim != 2:
        raise ValueError(f"an anomaly map must have shape (h, w), got {anomaly_map.shape}")
    height, width = check_size(size, "size")
    if anomaly_map.shape == (height, width):
        return anomaly_map
    resized = Image.fromarray(anomaly_map.astype(np.float32)).resize((width, height), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float64)


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


def _upright(image, source):
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
    image = _upright(image, source)
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

    Examples
    --------
    >>> resize_crop_geometry((30, 40), (16, 16))  # 40 * 16 / 30 = 21.3 -> 21 wide
    ((16, 21), (0, 2))
    """
    h, w = original_size
    th, tw = target_size
    if th * w >= tw * h:  # height is the binding side (th / h >= tw / w)
        rh, rw = th, max(tw, int(w * th / h))
    else:
        rh, rw = max(th, int(h * tw / w)), tw
    return (rh, rw), (int(round((rh - th) / 2.0)), int(round((rw - tw) / 2.0)))


def crop_box(original_size, target_size):
    """Where the model input lies on the original image, in the image's pixels.

    The inverse view of :func:`resize_crop_geometry`, used to put maps and
    masks of the model input back on the image.

    Parameters
    ----------
    original_size : (int, int)
        (height, width) of the image.
    target_size : (int, int)
        (height, width) of the model input.

    Returns
    -------
    box : (int, int, int, int)
        ``(y0, y1, x0, x1)``: rows ``y0:y1`` and columns ``x0:x1``; never
        empty.

    Examples
    --------
    >>> crop_box((30, 60), (8, 8))  # the centre 30 x 30 of a 30 x 60 image
    (0, 30, 15, 45)
    """
    h0, w0 = original_size
    (rh, rw), (top, left) = resize_crop_geometry((h0, w0), target_size)
    # the resize scales each axis by rh/h0, rw/w0
    y0, y1 = (min(h0, max(0, round(v * h0 / rh))) for v in (top, top + target_size[0]))
    x0, x1 = (min(w0, max(0, round(v * w0 / rw))) for v in (left, left + target_size[1]))
    return y0, max(y1, y0 + 1), x0, max(x1, x0 + 1)


def paste_to_original(small, original_size, target_size, resample, fill):
    """An 8-bit image over the model input, put back on the original image.

    The image is resized into the :func:`crop_box` and the borders the crop
    cut away are filled. 8 bits a pixel: an overlay or mask of a large photo
    stays small in memory (:func:`masks_to_original` and the command line's
    overlays use it).

    Parameters
    ----------
    small : PIL.Image.Image, mode "L"
        The image over the model input, at any resolution.
    original_size : (int, int)
        (height, width) of the original image.
    target_size : (int, int)
        (height, width) of the model input.
    resample : int
        The PIL resampling filter (e.g. ``PIL.Image.BILINEAR``, which
        antialiases when it shrinks).
    fill : int or "min"
        Value of the cut-away borders; ``"min"`` takes the resized image's
        minimum (nothing unseen looks anomalous).

    Returns
    -------
    image : PIL.Image.Image, mode "L", of the original size

    Examples
    --------
    >>> from PIL import Image
    >>> full = paste_to_original(Image.new("L", (8, 8), 200), (30, 60), (8, 8), Image.NEAREST, 0)
    >>> full.size, full.getpixel((0, 0)), full.getpixel((30, 15))
    ((60, 30), 0, 200)
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

    Examples
    --------
    >>> from PIL import Image
    >>> image, _ = load_image(Image.new("RGB", (40, 30), (255, 0, 0)))
    >>> x = preprocess(image, (16, 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    >>> tuple(x.shape), x[:, 0, 0].tolist()
    ((3, 16, 16), [1.0, -1.0, -1.0])
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


def maps_to_original(maps, original_sizes, input_size, *, fill="min"):
    """Put maps of the model input back on the original images.

    Inverse of the preprocessing's resize + centre crop: each map covers the
    crop region of its image; it is resized (bilinear) to the footprint of
    that region in original pixels and the borders the crop cut away are
    filled, so each output has the image's original size.

    Parameters
    ----------
    maps : ndarray of shape (n_images, h, w) or sequence of 2-D arrays
        One map per image over the model input (any resolution: the input
        size, or the patch grid).
    original_sizes : sequence of (int, int)
        (height, width) of each original image (``PatchTokens.original_sizes``).
    input_size : int or (int, int)
        Model input (height, width) (``PatchTokens.input_size``).
    fill : {"min", "edge"} or float, default="min"
        Value of the cropped-away borders, which the model never saw: the
        map's minimum (nothing unseen looks anomalous), the nearest edge
        value of the map, or a constant.

    Returns
    -------
    maps : list of ndarray of shape (height_i, width_i), float32

    Examples
    --------
    >>> import numpy as np
    >>> out = maps_to_original(np.ones((1, 4, 4)), [(30, 60)], 8)
    >>> out[0].shape, float(out[0][:, 15:45].min()), float(out[0][:, :15].max())
    ((30, 60), 1.0, 1.0)
    """
    input_size = check_size(input_size, "input_size")
    if len(maps) != len(original_sizes):
        raise ValueError(f"got {len(maps)} maps for {len(original_sizes)} original sizes")
    is_number = isinstance(fill, numbers.Real) and not isinstance(fill, bool)
    if not (is_number or fill in ("min", "edge")):
        raise ValueError(f"fill must be 'min', 'edge' or a number, got {fill!r}")
    out = []
    for m, size in zip(maps, original_sizes):
        m = np.asarray(m, dtype=np.float32)
        if m.ndim != 2:
            raise ValueError(f"each map must be 2-D, got shape {m.shape}")
        h0, w0 = check_size(size, "original size")
        y0, y1, x0, x1 = crop_box((h0, w0), input_size)
        inner = F.interpolate(
            torch.from_numpy(m)[None, None], size=(y1 - y0, x1 - x0),
            mode="bilinear", align_corners=False, antialias=True,
        )[0, 0].numpy()
        pad = ((y0, h0 - y1), (x0, w0 - x1))
        if fill == "edge":
            full = np.pad(inner, pad, mode="edge")
        else:
            value = float(inner.min()) if fill == "min" else float(fill)
            full = np.pad(inner, pad, mode="constant", constant_values=value)
        out.append(full.astype(np.float32, copy=False))
    return out


def masks_to_original(masks, original_sizes, input_size):
    """Put binary masks of the model input back on the original images.

    The counterpart of :func:`maps_to_original` for defect masks
    (``MutualScoringDetector.anomaly_masks_``): each mask is resized to the
    footprint of the crop region in original pixels (bilinear with
    antialiasing, then cut at one half, so edges stay smooth and a region
    keeps its area; 8 bits a pixel, so large photos cost little memory)
    and the borders the crop cut away are left unmarked.

    Parameters
    ----------
    masks : ndarray of shape (n_images, h, w) or sequence of 2-D arrays
        One mask per image over the model input; values above 0 (or True)
        are marked.
    original_sizes : sequence of (int, int)
        (height, width) of each original image (``PatchTokens.original_sizes``,
        ``MutualScoringDetector.original_sizes_``).
    input_size : int or (int, int)
        Model input (height, width) (``MutualScoringDetector.input_size_``).

    Returns
    -------
    masks : list of ndarray of shape (height_i, width_i), bool

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.zeros((1, 8, 8), bool); mask[0, :, 4:] = True
    >>> out = masks_to_original(mask, [(30, 60)], 8)
    >>> out[0].shape, out[0].dtype, bool(out[0][:, :30].any()), bool(out[0][:, 30:45].all())
    ((30, 60), dtype('bool'), False, True)
    """
    input_size = check_size(input_size, "input_size")
    if len(masks) != len(original_sizes):
        raise ValueError(f"got {len(masks)} masks for {len(original_sizes)} original sizes")
    out = []
    for mask, size in zip(masks, original_sizes):
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"each mask must be 2-D, got shape {mask.shape}")
        small = Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8))
        # 8 bits a pixel, so the mask of a large photo stays small in memory
        full = paste_to_original(small, check_size(size, "original size"), input_size, Image.BILINEAR, 0)
        out.append(np.asarray(full) >= 128)
    return out


def masks_to_input(masks, input_size):
    """Resize and centre-crop ground-truth masks exactly like their images.

    Use it to compare anomaly maps with masks at the model input size, as the
    paper's pixel metrics do (docs/algorithm.rst, "Evaluation"); :func:`maps_to_original` goes
    the other way.

    Parameters
    ----------
    masks : sequence of 2-D arrays
        One mask per image at the image's original size; values above 0 are
        anomalous.
    input_size : int or (int, int)
        Model input (height, width) (``PatchTokens.input_size``).

    Returns
    -------
    masks : ndarray of shape (n_images, height, width), bool

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.zeros((30, 60), np.uint8); mask[:, 30:] = 1
    >>> out = masks_to_input([mask], 10)
    >>> out.shape, int(out[0, 0].sum())
    ((1, 10, 10), 5)
    """
    th, tw = check_size(input_size, "input_size")
    out = np.empty((len(masks), th, tw), dtype=bool)
    for i, mask in enumerate(masks):
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"each mask must be 2-D, got shape {mask.shape}")
        (rh, rw), (top, left) = resize_crop_geometry(mask.shape, (th, tw))
        out[i] = resize_mask(mask, (rh, rw))[top : top + th, left : left + tw]
    return out
