"""The geometry between an image and the model input: resize, centre crop, and back.

:func:`preprocess` resizes an image (bicubic) so that it covers the model
input and cuts the input from its centre; :func:`resize_crop_geometry` and
:func:`crop_box` say where the input lies on the image. :func:`masks_to_input`
takes ground-truth masks the same way (nearest neighbour, through
:func:`resize_mask`; a float map is resized by :func:`resize_map`), and
:func:`maps_to_original` and
:func:`masks_to_original` (with :func:`paste_to_original`) put what the model
produced back on the original images.

Images are read by :mod:`sklearn_musc.images`; this module only places them.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ._validation import check_size

__all__ = [
    "crop_box",
    "maps_to_original",
    "masks_to_input",
    "masks_to_original",
    "paste_to_original",
    "preprocess",
    "resize_crop_geometry",
    "resize_map",
    "resize_mask",
]


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
    """An 8-bit (or float32) image over the model input, put back on the original image.

    The image is resized into the :func:`crop_box` and the borders the crop
    cut away are filled. 8 bits a pixel: an overlay or mask of a large photo
    stays small in memory (:func:`masks_to_original` and the command line's
    overlays use it).

    Parameters
    ----------
    small : PIL.Image.Image, mode "L" (or "F")
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
    image : PIL.Image.Image, of ``small``'s mode and the original size

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
    full = Image.new(small.mode, (w0, h0), fill if small.mode == "F" else int(fill))
    full.paste(inner, (x0, y0))
    return full


def preprocess(image, size, mean, std):
    """Resize (bicubic) to cover ``size``, centre-crop, scale to [0, 1], normalise.

    Parameters
    ----------
    image : PIL.Image.Image (mode "RGB") or ndarray of shape (H, W, 3), float32
        An image from :func:`~sklearn_musc.images.load_image`.
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
    >>> from sklearn_musc.images import load_image
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
