"""Ground-truth masks of a dataset as one binary array (:func:`load_masks`)."""

from __future__ import annotations

import numpy as np

from .._validation import check_size
from ..images import read_image_size, read_mask
from ..geometry import resize_mask


def _image_size(bunch, i):
    """(height, width) of image i, upright, from the loaded arrays or the file header."""
    images = bunch.get("images")
    if images is not None:
        return tuple(np.asarray(images[i]).shape[:2])
    return read_image_size(bunch["paths"][i])


def load_masks(bunch, size=None, threshold=0):
    """Binary ground-truth masks of a dataset read by :mod:`sklearn_musc.datasets`.

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
    size = None if size is None else check_size(size, "size")
    if "mask_paths" not in bunch and "masks" in bunch:
        masks = np.asarray(bunch["masks"])
        if size is None or masks.shape[1:] == size:
            return (masks > threshold).astype(np.uint8)
        return np.stack([resize_mask(m > threshold, size) for m in masks]).astype(np.uint8)
    mask_paths = bunch["mask_paths"]
    out = []
    for i, mask_path in enumerate(mask_paths):
        target = size if size is not None else _image_size(bunch, i)
        if mask_path is None:
            out.append(np.zeros(target, dtype=np.uint8))
            continue
        out.append(resize_mask(read_mask(mask_path) > threshold, target).astype(np.uint8))
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

