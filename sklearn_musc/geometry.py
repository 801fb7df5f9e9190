"""The geometry between an image and the model input: fit, and back.

How an image is fitted to the model input is its *crop mode* (timm's words
for the same choice):

* ``"center"``: resized (bicubic) so that it covers the input, then the
  input is cut from its centre (MuSc's MVTec convention, the ``paper-*``
  presets). An image whose aspect ratio differs from the input's loses its
  ends: the model never sees them.
* ``"border"``: resized so that it fits inside the input, the rest padded
  with the backbone's mean colour (letterbox): the whole image is seen, at a
  lower resolution along its long side.
* ``"squash"``: resized to the input, aspect ratio not kept: the whole image
  is seen, stretched.
* ``"auto"`` (the default): ``"center"`` wherever the centre crop cuts no
  more than the rounding of the resize (the image has the input's aspect
  ratio up to a pixel), so MVTec images are fitted exactly as the paper fits
  them;
  every other image ``"squash"``, chosen by measurement
  (benchmarks/RESULTS.md, "How images are fitted to the model input").

:func:`fit_geometry` says where an image lies in the input and
:func:`dropped_fraction` how much of it the model does not see (a
:class:`CroppedImageWarning` says so when it is not nothing).
:func:`preprocess` fits an image; :func:`masks_to_input` takes ground-truth
masks the same way (nearest neighbour, through :func:`resize_mask`; a float
map is resized by :func:`resize_map`), and :func:`maps_to_original` and
:func:`masks_to_original` (with :func:`paste_to_original`) put what the model
produced back on the original images, inverting each crop mode: an original
pixel takes the value of the map where its centre landed in the input.

Images are read by :mod:`sklearn_musc.images`; this module only places them.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from PIL import Image

from ._validation import check_size

__all__ = [
    "CROP_MODES",
    "CroppedImageWarning",
    "crop_box",
    "dropped_fraction",
    "fit_geometry",
    "maps_to_original",
    "masks_to_input",
    "masks_to_original",
    "paste_to_original",
    "preprocess",
    "resize_crop_geometry",
    "resize_map",
    "resize_mask",
]

#: The ways an image can be fitted to the model input (see the module's notes).
CROP_MODES = ("auto", "center", "border", "squash")

# What "auto" does with an image that the centre crop would cut: the mode
# that did best on elongated MVTec AD images (studies/crop_modes.py).
_AUTO_COVER = "squash"


class CroppedImageWarning(UserWarning):
    """Part of an image is not seen by the model (``crop_mode="center"`` on another aspect ratio).

    The anomaly maps of those pixels hold no evidence (``maps_to_original``
    fills them), so a defect there cannot be found; ``crop_mode="auto"``,
    ``"border"`` or ``"squash"`` show the model the whole image.
    """


def _check_crop_mode(crop_mode):
    """``crop_mode`` itself when it is one of :data:`CROP_MODES`, else a one-line error."""
    if not (isinstance(crop_mode, str) and crop_mode in CROP_MODES):
        raise ValueError(f"crop_mode must be one of {', '.join(map(repr, CROP_MODES))}, got {crop_mode!r}")
    return crop_mode


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


def resize_crop_geometry(original_size, target_size):
    """Where the resize and centre crop of ``crop_mode="center"`` put an image.

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


def _round_div(a, b):
    """``a / b`` rounded to the nearest int, halves up (positive ints)."""
    return (2 * a + b) // (2 * b)


def fit_geometry(original_size, input_size, crop_mode="auto"):
    """How ``crop_mode`` fits an image to the model input.

    The image is resized to ``resized_size`` and put with its top-left corner
    at ``offset`` in the input: an original pixel ``(i, j)`` has its centre
    at ``(offset[0] + (i + 0.5) * rh / h, offset[1] + (j + 0.5) * rw / w)``
    in input pixels. A negative offset is a crop (``"center"``), a positive
    one a border (``"border"``).

    Parameters
    ----------
    original_size : (int, int)
        (height, width) of the image.
    input_size : int or (int, int)
        (height, width) of the model input.
    crop_mode : {"auto", "center", "border", "squash"}, default="auto"
        See the module's notes.

    Returns
    -------
    mode : {"center", "border", "squash"}
        The mode used for this image (``"auto"`` resolved).
    resized_size : (int, int)
        (height, width) of the resized image.
    offset : (int, int)
        (top, left) of the resized image in the input.

    Examples
    --------
    >>> fit_geometry((30, 60), (8, 8), "center")  # the centre 8 x 8 of 8 x 16
    ('center', (8, 16), (0, -4))
    >>> fit_geometry((30, 60), (8, 8), "border")  # 4 x 8, 2 rows of border above and below
    ('border', (4, 8), (2, 0))
    >>> fit_geometry((30, 60), (8, 8))[0], fit_geometry((30, 30), (8, 8))[0]
    ('squash', 'center')
    """
    h, w = check_size(original_size, "original size")
    th, tw = check_size(input_size, "input_size")
    mode = _check_crop_mode(crop_mode)
    if mode == "auto":
        mode = _AUTO_COVER if _center_cuts((h, w), (th, tw)) else "center"
    if mode == "center":
        resized, (top, left) = resize_crop_geometry((h, w), (th, tw))
        return mode, resized, (-top, -left)
    if mode == "squash":
        return mode, (th, tw), (0, 0)
    if th * w <= tw * h:  # height is the binding side (th / h <= tw / w)
        rh, rw = th, min(tw, max(1, _round_div(w * th, h)))
    else:
        rh, rw = min(th, max(1, _round_div(h * tw, w))), tw
    return mode, (rh, rw), ((th - rh) // 2, (tw - rw) // 2)


def _seen(n, resized, offset, extent):
    """Indices ``i`` of an image axis of ``n`` pixels whose centres land inside the input.

    ``0 <= offset + (i + 0.5) * resized / n < extent``, in exact integer arithmetic.
    """
    twice = 2 * np.arange(n, dtype=np.int64) + 1
    inside = (twice * resized >= -2 * offset * n) & (twice * resized < 2 * (extent - offset) * n)
    (index,) = np.nonzero(inside)
    if index.size == 0:  # cannot happen for a crop that covers the input; kept safe
        index = np.array([min(n - 1, max(0, int(n * (extent / 2 - offset) / resized)))])
    return int(index[0]), int(index[-1]) + 1


def _center_cuts(original_size, input_size):
    """Whether the centre crop cuts more than the rounding of the resize (one resized pixel an axis)."""
    (rh, rw), _ = resize_crop_geometry(original_size, input_size)
    return rh - input_size[0] > 1 or rw - input_size[1] > 1


def crop_box(original_size, target_size, crop_mode="auto"):
    """The part of the original image the model sees, in the image's pixels.

    The pixels whose centres land inside the model input: all of them,
    except under ``crop_mode="center"`` for another aspect ratio than the
    input's.

    Parameters
    ----------
    original_size : (int, int)
        (height, width) of the image.
    target_size : int or (int, int)
        (height, width) of the model input.
    crop_mode : {"auto", "center", "border", "squash"}, default="auto"
        How the image was fitted (:func:`fit_geometry`).

    Returns
    -------
    box : (int, int, int, int)
        ``(y0, y1, x0, x1)``: rows ``y0:y1`` and columns ``x0:x1``; never
        empty.

    Examples
    --------
    >>> crop_box((30, 60), (8, 8), "center")  # the centre 30 x 30 of a 30 x 60 image
    (0, 30, 15, 45)
    >>> crop_box((30, 60), (8, 8))
    (0, 30, 0, 60)
    """
    h, w = check_size(original_size, "original size")
    th, tw = check_size(target_size, "input_size")
    _, (rh, rw), (dy, dx) = fit_geometry((h, w), (th, tw), crop_mode)
    return _seen(h, rh, dy, th) + _seen(w, rw, dx, tw)


def dropped_fraction(original_size, input_size, crop_mode="auto"):
    """The share of an image's pixels that the model does not see.

    Parameters
    ----------
    original_size : (int, int)
        (height, width) of the image.
    input_size : int or (int, int)
        (height, width) of the model input.
    crop_mode : {"auto", "center", "border", "squash"}, default="auto"
        How the image is fitted (:func:`fit_geometry`).

    Returns
    -------
    fraction : float
        In [0, 1): 0 unless the centre crop cuts the image. A cut of one
        resized pixel, the rounding of the resize of an image whose aspect
        ratio is the input's up to a pixel (e.g. MVTec AD's 198 x 197 images
        at 224 x 224), is not counted.

    Examples
    --------
    >>> dropped_fraction((30, 60), 8, "center"), dropped_fraction((30, 60), 8)
    (0.5, 0.0)
    """
    h, w = check_size(original_size, "original size")
    mode, _, _ = fit_geometry((h, w), input_size, crop_mode)
    if mode != "center" or not _center_cuts((h, w), check_size(input_size, "input_size")):
        return 0.0
    y0, y1, x0, x1 = crop_box((h, w), input_size, crop_mode)
    return 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


def _to_original(values, original_size, input_size, crop_mode, resample=Image.BILINEAR):
    """``values`` (2-D, over the model input, any resolution) resized onto the original image.

    Each original pixel takes the value (bilinear, antialiased when the map is
    finer than the image) at the point where its centre landed in the input;
    the map is extended by its edge values beyond its borders, which is what
    the pixels a centre crop cut away get. Returns a PIL image (mode "F"
    for float32 values, "L" for uint8) and the :func:`crop_box` of the
    seen pixels.
    """
    h, w = original_size
    th, tw = input_size
    _, (rh, rw), (dy, dx) = fit_geometry((h, w), (th, tw), crop_mode)
    mh, mw = values.shape
    sy, sx = mh / th, mw / tw  # map pixels per input pixel
    # where the image's top, bottom, left and right edges lie on the map
    top, bottom, left, right = dy * sy, (dy + rh) * sy, dx * sx, (dx + rw) * sx
    # PIL reads taps inside the image only: extend the map by its edge values
    # far enough that no tap of an output pixel is cut off
    support = 2.0 * max(1.0, (bottom - top) / h, (right - left) / w) + 2.0  # bicubic's is 2
    pad = int(math.ceil(max(0.0, -top, -left, bottom - mh, right - mw) + support))
    padded = np.pad(values, pad, mode="edge")
    full = Image.fromarray(padded).resize(
        (w, h), resample, box=(left + pad, top + pad, right + pad, bottom + pad))
    return full, crop_box((h, w), (th, tw), crop_mode)


def paste_to_original(small, original_size, target_size, resample=Image.BILINEAR, fill=0, crop_mode="auto"):
    """An 8-bit (or float32) image over the model input, put back on the original image.

    The inverse of ``crop_mode``'s fit (:func:`fit_geometry`): each original
    pixel takes the value where its centre landed in the input, and the
    pixels a centre crop cut away are filled. 8 bits a pixel: an overlay or
    mask of a large photo stays small in memory (:func:`masks_to_original`
    and the command line's overlays use it).

    Parameters
    ----------
    small : PIL.Image.Image, mode "L" (or "F")
        The image over the model input, at any resolution.
    original_size : (int, int)
        (height, width) of the original image.
    target_size : int or (int, int)
        (height, width) of the model input.
    resample : int, default=PIL.Image.BILINEAR
        The PIL resampling filter (``PIL.Image.BILINEAR`` antialiases when
        it shrinks).
    fill : int or "min", default=0
        Value of the cut-away pixels; ``"min"`` takes the minimum over the
        seen pixels (nothing unseen looks anomalous).
    crop_mode : {"auto", "center", "border", "squash"}, default="auto"
        How the image was fitted to the input.

    Returns
    -------
    image : PIL.Image.Image, of ``small``'s mode and the original size

    Examples
    --------
    >>> from PIL import Image
    >>> full = paste_to_original(Image.new("L", (8, 8), 200), (30, 60), (8, 8), fill=0, crop_mode="center")
    >>> full.size, full.getpixel((0, 0)), full.getpixel((30, 15))
    ((60, 30), 0, 200)
    """
    h0, w0 = check_size(original_size, "original size")
    values = (np.asarray(small, dtype=np.float32) if small.mode == "F"
              else np.asarray(small.convert("L"), dtype=np.uint8))
    full, (y0, y1, x0, x1) = _to_original(values, (h0, w0), check_size(target_size, "input_size"),
                                          crop_mode, resample)
    if (y0, y1, x0, x1) == (0, h0, 0, w0):
        return full
    inner = full.crop((x0, y0, x1, y1))
    if fill == "min":
        fill = inner.getextrema()[0]
    full = Image.new(small.mode, (w0, h0), fill if small.mode == "F" else int(fill))
    full.paste(inner, (x0, y0))
    return full


def preprocess(image, size, mean, std, crop_mode="auto"):
    """Fit an image to the model input (bicubic), scale to [0, 1], normalise.

    Parameters
    ----------
    image : PIL.Image.Image (mode "RGB") or ndarray of shape (H, W, 3), float32
        An image from :func:`~sklearn_musc.images.load_image`.
    size : (int, int)
        (height, width) of the model input.
    mean, std : sequence of 3 floats
        Per-channel normalisation of the backbone; a ``"border"`` is the
        mean colour (0 after normalisation).
    crop_mode : {"auto", "center", "border", "squash"}, default="auto"
        How the image is fitted (:func:`fit_geometry`).

    Returns
    -------
    tensor : torch.Tensor of shape (3, height, width), float32

    Examples
    --------
    >>> from PIL import Image
    >>> from sklearn_musc.images import load_image
    >>> image, _ = load_image(Image.new("RGB", (40, 30), (255, 0, 0)))
    >>> x = preprocess(image, (16, 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_mode="center")
    >>> tuple(x.shape), x[:, 0, 0].tolist()
    ((3, 16, 16), [1.0, -1.0, -1.0])
    >>> x = preprocess(image, (16, 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_mode="border")
    >>> x[:, 0, 0].tolist(), x[:, 8, 8].tolist()  # 12 x 16, two rows of border above
    ([0.0, 0.0, 0.0], [1.0, -1.0, -1.0])
    """
    if isinstance(image, Image.Image):
        original = (image.height, image.width)
    else:
        original = image.shape[:2]
    th, tw = size
    _, (rh, rw), (dy, dx) = fit_geometry(original, (th, tw), crop_mode)
    # the part of the resized image inside the input, and where it goes
    y0, x0 = max(0, -dy), max(0, -dx)
    y1, x1 = min(rh, th - dy), min(rw, tw - dx)
    box = (x0, y0, x1, y1)
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
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    out = np.zeros((th, tw, 3), dtype=np.float32)  # the border: the mean colour
    out[y0 + dy : y1 + dy, x0 + dx : x1 + dx] = (values - mean) / std
    return torch.from_numpy(out).permute(2, 0, 1)


def maps_to_original(maps, original_sizes, input_size, *, crop_mode="auto", fill="min"):
    """Put maps of the model input back on the original images.

    The inverse of the fit of each image to the input (:func:`fit_geometry`):
    each original pixel takes the map's value (bilinear, antialiased where
    the map is finer than the image) at the point where its centre landed in
    the input, so each output has the image's original size. The pixels a
    centre crop cut away, which the model never saw, are filled.

    Parameters
    ----------
    maps : ndarray of shape (n_images, h, w) or sequence of 2-D arrays
        One map per image over the model input (any resolution: the input
        size, or the patch grid).
    original_sizes : sequence of (int, int)
        (height, width) of each original image (``PatchTokens.original_sizes``).
    input_size : int or (int, int)
        Model input (height, width) (``PatchTokens.input_size``).
    crop_mode : {"auto", "center", "border", "squash"}, default="auto"
        How the images were fitted (``PatchTokens.crop_mode``,
        ``MutualScoringDetector.crop_mode_``).
    fill : {"min", "edge"} or float, default="min"
        Value of the cropped-away pixels: the minimum over the seen pixels
        (nothing unseen looks anomalous), the nearest edge value of the map,
        or a constant.

    Returns
    -------
    maps : list of ndarray of shape (height_i, width_i), float32

    Examples
    --------
    >>> import numpy as np
    >>> out = maps_to_original(np.ones((1, 4, 4)), [(30, 60)], 8, crop_mode="center")
    >>> out[0].shape, float(out[0][:, 15:45].min()), float(out[0][:, :15].max())
    ((30, 60), 1.0, 1.0)
    """
    input_size = check_size(input_size, "input_size")
    _check_crop_mode(crop_mode)
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
        full, (y0, y1, x0, x1) = _to_original(m, (h0, w0), input_size, crop_mode)
        full = np.array(full, dtype=np.float32)
        if fill != "edge" and (y0, y1, x0, x1) != (0, h0, 0, w0):
            value = float(full[y0:y1, x0:x1].min()) if fill == "min" else float(fill)
            inner = full[y0:y1, x0:x1].copy()
            full[:] = value
            full[y0:y1, x0:x1] = inner
        out.append(full)
    return out


def masks_to_original(masks, original_sizes, input_size, *, crop_mode="auto"):
    """Put binary masks of the model input back on the original images.

    The counterpart of :func:`maps_to_original` for defect masks
    (``MutualScoringDetector.anomaly_masks_``): each mask is put back as
    :func:`maps_to_original` puts a map (bilinear with antialiasing, then cut
    at one half, so edges stay smooth and a region keeps its area; 8 bits a
    pixel, so large photos cost little memory), and the pixels a centre crop
    cut away are left unmarked.

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
    crop_mode : {"auto", "center", "border", "squash"}, default="auto"
        How the images were fitted (``MutualScoringDetector.crop_mode_``).

    Returns
    -------
    masks : list of ndarray of shape (height_i, width_i), bool

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.zeros((1, 8, 8), bool); mask[0, :, 4:] = True
    >>> out = masks_to_original(mask, [(30, 60)], 8, crop_mode="center")
    >>> out[0].shape, out[0].dtype, bool(out[0][:, :30].any()), bool(out[0][:, 30:45].all())
    ((30, 60), dtype('bool'), False, True)
    """
    input_size = check_size(input_size, "input_size")
    _check_crop_mode(crop_mode)
    if len(masks) != len(original_sizes):
        raise ValueError(f"got {len(masks)} masks for {len(original_sizes)} original sizes")
    out = []
    for mask, size in zip(masks, original_sizes):
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"each mask must be 2-D, got shape {mask.shape}")
        small = Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8))
        # 8 bits a pixel, so the mask of a large photo stays small in memory
        full = paste_to_original(small, check_size(size, "original size"), input_size, Image.BILINEAR, 0,
                                 crop_mode)
        out.append(np.asarray(full) >= 128)
    return out


def masks_to_input(masks, input_size, *, crop_mode="auto"):
    """Fit ground-truth masks to the model input exactly like their images.

    Nearest-neighbour resize (so a mask stays binary), then the crop or
    border of ``crop_mode`` (a border is unmarked). Use it to compare anomaly
    maps with masks at the model input size, as the paper's pixel metrics do
    (docs/algorithm.rst, "Evaluation"); :func:`maps_to_original` goes the
    other way.

    Parameters
    ----------
    masks : sequence of 2-D arrays
        One mask per image at the image's original size; values above 0 are
        anomalous.
    input_size : int or (int, int)
        Model input (height, width) (``PatchTokens.input_size``).
    crop_mode : {"auto", "center", "border", "squash"}, default="auto"
        How the images were fitted (``PatchTokens.crop_mode``).

    Returns
    -------
    masks : ndarray of shape (n_images, height, width), bool

    Examples
    --------
    >>> import numpy as np
    >>> mask = np.zeros((30, 60), np.uint8); mask[:, 30:] = 1
    >>> out = masks_to_input([mask], 10, crop_mode="center")
    >>> out.shape, int(out[0, 0].sum())
    ((1, 10, 10), 5)
    """
    th, tw = check_size(input_size, "input_size")
    _check_crop_mode(crop_mode)
    out = np.zeros((len(masks), th, tw), dtype=bool)
    for i, mask in enumerate(masks):
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"each mask must be 2-D, got shape {mask.shape}")
        _, (rh, rw), (dy, dx) = fit_geometry(mask.shape, (th, tw), crop_mode)
        resized = resize_mask(mask, (rh, rw))
        y0, x0 = max(0, -dy), max(0, -dx)
        y1, x1 = min(rh, th - dy), min(rw, tw - dx)
        out[i, y0 + dy : y1 + dy, x0 + dx : x1 + dx] = resized[y0:y1, x0:x1]
    return out
