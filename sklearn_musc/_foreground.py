"""Zero-shot foreground masks from a batch's own patch features (first principal component).

The first principal component of all patch features of a batch splits the
patches in two. On parts lying on a background (screws, pills, nuts) it
separates the part from the background inside every image; on textures it
mostly separates whole images from each other. Two label-free statistics
tell the cases apart (:func:`is_object_on_background`).
"""

import numpy as np
import torch
import torch.nn.functional as F

# The auto rule (MutualScoringDetector(foreground="auto")): the component must
# vary inside images more than between them, and the background it finds must
# hold most of the image border (it surrounds the part).
MIN_WITHIN_SHARE = 0.5
MAX_BORDER_FOREGROUND = 0.25


def _unit(features, dim):
    """Patch features as float64 rows of unit norm (the geometry mutual scoring compares them in)."""
    z = torch.as_tensor(np.asarray(features)).reshape(-1, dim).to(torch.float64)
    return F.normalize(z, dim=-1)


def first_component(features, chunk=64):
    """Projection of every patch on the batch's first principal component.

    Parameters
    ----------
    features : ndarray of shape (n_images, h, w, dim)

    Returns
    -------
    projections : ndarray of shape (n_images, h, w), float64
        Of the unit-norm features, centred (mean 0 over the batch); the
        component's sign is arbitrary.
    """
    n, h, w, dim = features.shape
    total = torch.zeros(dim, dtype=torch.float64)
    gram = torch.zeros(dim, dim, dtype=torch.float64)
    for start in range(0, n, chunk):  # float64 sums, one chunk of images at a time
        z = _unit(features[start : start + chunk], dim)
        total += z.sum(0)
        gram += z.T @ z
    count = n * h * w
    mean = total / count
    cov = gram / count - torch.outer(mean, mean)
    _, vectors = torch.linalg.eigh(cov)
    v = vectors[:, -1]
    out = np.empty((n, h, w))
    for start in range(0, n, chunk):
        z = _unit(features[start : start + chunk], dim)
        out[start : start + chunk] = ((z - mean) @ v).reshape(-1, h, w).numpy()
    return out


def _border(h, w):
    ring = np.zeros((h, w), dtype=bool)
    ring[0], ring[-1], ring[:, 0], ring[:, -1] = True, True, True, True
    return ring


def foreground_masks(features, dilation=1):
    """Foreground masks of a batch and the statistics of the auto rule.

    The side of the first component that holds most of the border patches is
    the background. Each image's mask is its own foreground, joined with the
    patches that are foreground in at least half of the batch (a part missing
    where the others have it stays scored), and grown by ``dilation``
    patches (a defect on the part's edge stays scored).

    Parameters
    ----------
    features : ndarray of shape (n_images, h, w, dim)
    dilation : int, default=1

    Returns
    -------
    masks : ndarray of shape (n_images, h, w), bool
        True on the foreground.
    within_share : float
        Share of the component's variance that lies inside images (the rest
        is between the images' means).
    border_foreground : float
        Share of the border patches of the batch on the foreground side,
        before joining and growing.
    """
    p = first_component(features)
    n, h, w = p.shape
    ring = _border(h, w)
    fg = p > 0
    if fg[:, ring].mean() > 0.5:
        fg = ~fg
    border_foreground = float(fg[:, ring].mean())
    total = float((p**2).sum())
    within = float(((p - p.mean(axis=(1, 2), keepdims=True)) ** 2).sum())
    within_share = within / total if total > 0 else 0.0
    masks = fg | (fg.mean(axis=0) >= 0.5)
    if dilation:
        k = 2 * dilation + 1
        grown = F.max_pool2d(torch.as_tensor(masks, dtype=torch.float32)[:, None], k, stride=1, padding=dilation)
        masks = grown[:, 0].numpy() > 0
    return masks, within_share, border_foreground


def is_object_on_background(within_share, border_foreground, grid_size):
    """The auto rule: mask only a batch of parts on a background (no labels).

    True when the first component varies mostly inside images
    (``within_share >= 0.5``; textures: below 0.15 on MVTec AD) and the
    background holds at least three quarters of the border
    (``border_foreground <= 0.25``), on a grid with an interior (3 x 3 or
    more).
    """
    return (min(grid_size) >= 3 and within_share >= MIN_WITHIN_SHARE
            and border_foreground <= MAX_BORDER_FOREGROUND)


def mask_features(features, masks):
    """Feature sets (n, n_sets, h, w, dim) with background patches set to zero (a copy).

    A zero vector has dot product 0 with every unit vector: a background
    patch of a scorer then matches any patch at distance sqrt(2), the
    distance of an orthogonal feature, so it never vouches for a patch that
    has a closer match on a part.
    """
    out = np.array(features, copy=True)
    out[~masks[:, None].repeat(features.shape[1], axis=1)] = 0
    return out


def fill_background(set_scores, masks):
    """Background patch scores set to the lowest foreground score of their image and set (a copy)."""
    out = np.array(set_scores, copy=True)
    for i, m in enumerate(masks):
        if m.all() or not m.any():
            continue
        for s in range(out.shape[1]):
            out[i, s][~m] = out[i, s][m].min()
    return out
