"""Evaluation metrics of the MuSc paper (docs/algorithm.rst, "Evaluation"), exact and fast.

Image level: :func:`image_auroc`, :func:`image_ap`, :func:`image_f1_max` over
one score per image. Pixel level: :func:`pixel_auroc`, :func:`pixel_ap`,
:func:`pixel_f1_max` over all pixels of all images, and :func:`pro_score`,
the normalised area under the per-region-overlap curve up to a false-positive
rate of 0.3 (MVTec AD's official definition). :func:`evaluate` computes them
all, sorting the pixels only once.

All metrics are exact: every distinct score is a threshold and tied scores are
one threshold (no binning). They agree with :func:`sklearn.metrics.roc_auc_score`,
:func:`sklearn.metrics.average_precision_score` and the F1 of
:func:`sklearn.metrics.precision_recall_curve`, but avoid their float64 copies
and full argsort, so tens of millions of pixels take seconds: the scores of
the normal and of the anomalous pixels are sorted apart (a plain value sort),
and the counts at every distinct anomalous score are found by binary search
in the sorted normal scores. Thresholds holding only normal scores only move
the curves along the false-positive axis, which the AUROC (rank sum), AP and
F1-max do not need and the PRO curve covers exactly by its straight segments.

Labels: 1 (or ``True``) is anomalous, 0 normal; all metrics are fractions in
[0, 1], higher is better.
"""

import numbers

import numpy as np
from scipy import ndimage

__all__ = [
    "anomaly_scorer",
    "evaluate",
    "image_ap",
    "image_auroc",
    "image_f1_max",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1_max",
    "pro_score",
    "pro_score_sampled",
]

# 8-connectivity, as the official MVTec AD evaluation labels ground-truth regions
# (scipy.ndimage.label with structure=np.ones((3, 3))).
_REGION_STRUCTURE = np.ones((3, 3), dtype=bool)


# ---------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------

def _to_numpy(a, name):
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().numpy()
    try:
        a = np.asarray(a)
    except ValueError as exc:  # ragged sequence
        raise ValueError(f"{name} could not be made one array ({exc}); all entries must have "
                         "the same shape (resize the maps or masks to one size)") from None
    if a.dtype == object:
        try:
            a = a.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be numeric, got dtype object") from None
    return a


def _check_scores(scores, name):
    """Numeric, finite scores; kept in their own dtype (float32 maps stay float32)."""
    s = _to_numpy(scores, name)
    if s.dtype == bool:
        s = s.astype(np.uint8)
    if s.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be numeric, got dtype {s.dtype}")
    if s.dtype.kind == "f" and not np.isfinite(s).all():
        n_nan = int(np.isnan(s).sum())
        n_inf = int(np.isinf(s).sum())
        raise ValueError(f"{name} contain {n_nan} NaN and {n_inf} infinite values; "
                         "all scores must be finite")
    return s


def _check_labels(y_true):
    """1-D binary image labels (1/True = anomalous) -> bool array."""
    y = _to_numpy(y_true, "y_true")
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D (one label per image), got shape {y.shape}")
    if y.dtype == bool:
        return y
    if y.dtype.kind not in "iuf":
        raise ValueError("y_true must hold 0 (normal) / 1 (anomalous) or booleans, "
                         f"got dtype {y.dtype}")
    is_one = y == 1
    if not (is_one | (y == 0)).all():
        bad = np.unique(y[~(is_one | (y == 0))])[:5]
        raise ValueError("y_true is not binary: labels must be 0 (normal) or 1 (anomalous) "
                         f"(or booleans), got values such as {bad.tolist()}")
    return is_one


def _check_image_inputs(y_true, scores):
    y = _check_labels(y_true)
    s = _check_scores(scores, "scores")
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D (one score per image), got shape {s.shape}")
    if s.shape != y.shape:
        raise ValueError(f"y_true has {y.size} labels but scores has {s.size} entries; "
                         "they must match (one label and one score per image)")
    return y, s


def _check_masks(masks):
    m = _to_numpy(masks, "masks")
    if m.dtype == bool:
        return m
    if m.dtype.kind not in "iuf":
        raise ValueError(f"masks must be numeric or boolean, got dtype {m.dtype}")
    if m.dtype.kind == "f" and not np.isfinite(m).all():
        raise ValueError("masks contain NaN or infinite values")
    if m.dtype.kind != "u" and (m < 0).any():
        raise ValueError("masks contain negative values; they must be binary "
                         "(0 normal, any value > 0 anomalous)")
    return m > 0


def _check_pixel_inputs(masks, maps):
    """(n_images, H, W) bool masks and finite maps of the same shape."""
    m = _check_masks(masks)
    s = _check_scores(maps, "maps")
    if m.ndim not in (2, 3) or s.ndim not in (2, 3):
        raise ValueError("masks and maps must have shape (n_images, height, width) "
                         f"(or (height, width) for one image), got {m.shape} and {s.shape}")
    if m.shape != s.shape:
        raise ValueError(f"masks have shape {m.shape} but maps have shape {s.shape}; they must "
                         "match pixel for pixel: resize the maps to the masks (e.g. "
                         "sklearn_musc.maps_to_original) or the masks to the maps (e.g. "
                         "sklearn_musc.masks_to_input)")
    if m.ndim == 2:
        m, s = m[None], s[None]
    return m, s


def _check_classes(n_pos, n_neg, what, unit):
    if n_pos == 0 or n_neg == 0:
        present = "normal" if n_pos == 0 else "anomalous"
        raise ValueError(f"{what} contain only {present} {unit}s (a single class): the metric "
                         f"needs at least one anomalous and one normal {unit}")


def _check_max_fpr(max_fpr):
    if (not isinstance(max_fpr, numbers.Real) or isinstance(max_fpr, bool)
            or not 0.0 < max_fpr <= 1.0):
        raise ValueError(f"max_fpr must be a float in (0, 1], got {max_fpr!r}")
    return float(max_fpr)


# ---------------------------------------------------------------------------
# the shared ranking: counts at every distinct anomalous score
# ---------------------------------------------------------------------------

class _Ranking:
    """Counts of the exact ROC / PR / PRO curves at the distinct positive scores.

    For the distinct scores ``v`` of the positives (ascending), with the
    threshold rule "anomalous if score >= v":

    - ``pos_eq``: positives scoring exactly ``v``;
    - ``pos_ge``: positives scoring >= ``v`` (the true positives at ``v``);
    - ``neg_lt`` / ``neg_le``: negatives scoring < ``v`` / <= ``v``, so the
      false positives at ``v`` are ``n_neg - neg_lt`` and just above ``v`` they
      are ``n_neg - neg_le``;
    - ``weight_ge``: sum of the positives' weights scoring >= ``v`` (only when
      weights were given; the PRO).

    Thresholds holding only negatives are left out: they add nothing to the
    rank sum, AP or F1-max, and the curves are straight between the points
    kept.
    """

    def __init__(self, pos, neg, pos_weights=None):
        self.n_pos, self.n_neg = int(pos.size), int(neg.size)
        if pos_weights is None:
            pos_sorted = np.sort(pos, axis=None)
        else:
            order = np.argsort(pos, kind="stable")
            pos_sorted = pos[order]
            pos_weights = pos_weights[order]
        neg_sorted = np.sort(neg, axis=None)
        new = np.empty(pos_sorted.size, dtype=bool)
        new[:1] = True
        np.not_equal(pos_sorted[1:], pos_sorted[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        values = pos_sorted[starts]
        self.pos_ge = self.n_pos - starts
        self.pos_eq = np.diff(starts, append=self.n_pos)
        self.neg_lt = np.searchsorted(neg_sorted, values, side="left")
        self.neg_le = np.searchsorted(neg_sorted, values, side="right")
        self.weight_ge = None
        if pos_weights is not None:
            # sums from the top: the high-score end (small FPR) is the most accurate
            tail = np.cumsum(pos_weights[::-1])[::-1]
            self.weight_ge = tail[starts]

    @classmethod
    def from_labels(cls, y, scores, pos_weights=None):
        y = y.ravel()
        scores = scores.ravel()
        return cls(scores[y], scores[~y], pos_weights)

    def auroc(self):
        # Mann-Whitney rank sum with ties counted one half, in exact integers:
        # 2 * U = sum over positives of (2 * #neg below + #neg tied) = sum (lt + le).
        u2 = int(np.dot(self.pos_eq, self.neg_lt + self.neg_le))
        return u2 / (2 * self.n_pos * self.n_neg)

    def average_precision(self):
        # sum over thresholds of (R_n - R_{n-1}) P_n; only thresholds with positives add recall.
        fp = self.n_neg - self.neg_lt
        precision = self.pos_ge / (self.pos_ge + fp)
        return float(np.dot(self.pos_eq, precision) / self.n_pos)

    def f1_max(self):
        # F1 = 2 tp / (tp + fp + n_pos): never 0 / 0 here as n_pos > 0. Thresholds with
        # only negatives keep tp and raise fp, so they never hold the maximum.
        fp = self.n_neg - self.neg_lt
        return float(np.max(2.0 * self.pos_ge / (self.pos_ge + fp + self.n_pos)))

    def pro(self, n_regions, max_fpr):
        # Curve points from the highest threshold down: before each distinct positive
        # score v the curve reaches (fp just above v, PRO of the previous v) along a
        # horizontal segment (thresholds with only normal pixels), then steps to
        # (fp at v, PRO at v). It starts at (0, 0) and ends at (1, 1).
        m = self.pos_ge.size
        fpr_ge = ((self.n_neg - self.neg_lt) / self.n_neg)[::-1]
        fpr_gt = ((self.n_neg - self.neg_le) / self.n_neg)[::-1]
        pro = np.minimum(self.weight_ge / n_regions, 1.0)[::-1]
        x = np.empty(2 * m + 2)
        y = np.empty(2 * m + 2)
        x[0] = y[0] = 0.0
        x[-1] = y[-1] = 1.0
        x[1:-1:2] = fpr_gt
        x[2:-1:2] = fpr_ge
        y[1] = 0.0
        y[3:-1:2] = pro[:-1]
        y[2:-1:2] = pro
        return float(_area_up_to(x, y, max_fpr) / max_fpr)


def _area_up_to(x, y, x_max):
    """Trapezoid area under (x, y), x non-decreasing, from x[0] to x_max (interpolated)."""
    k = int(np.searchsorted(x, x_max, side="right"))
    area = float(np.dot(np.diff(x[:k]), y[1:k] + y[: k - 1])) / 2.0
    if k < x.size:
        x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
        y_cut = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += (x_max - x0) * (y0 + y_cut) / 2.0
    return area


def _image_ranking(y_true, scores):
    y, s = _check_image_inputs(y_true, scores)
    n_pos = int(y.sum())
    _check_classes(n_pos, y.size - n_pos, "y_true", "image")
    return _Ranking.from_labels(y, s)


def _pixel_ranking(masks, maps, regions=False):
    """Ranking of all pixels; with ``regions``, PRO weights and the region count too."""
    m, s = _check_pixel_inputs(masks, maps)
    n_pos = int(np.count_nonzero(m))
    _check_classes(n_pos, m.size - n_pos, "masks", "pixel")
    if not regions:
        return _Ranking.from_labels(m, s), None
    weights, n_regions = _region_weights(m)
    return _Ranking.from_labels(m, s, weights), n_regions


def _region_weights(masks):
    """1 / |region| for each anomalous pixel (in ``maps[masks]`` order) and the region count.

    Regions are the 8-connected components of each image's mask.
    """
    weights = []
    n_regions = 0
    for i in np.flatnonzero(masks.any(axis=(1, 2))):
        labels, k = ndimage.label(masks[i], structure=_REGION_STRUCTURE)
        region_of_pixel = labels[masks[i]]
        sizes = np.bincount(region_of_pixel)
        weights.append(1.0 / sizes[region_of_pixel])
        n_regions += k
    return np.concatenate(weights), n_regions


# ---------------------------------------------------------------------------
# image level
# ---------------------------------------------------------------------------

def image_auroc(y_true, scores):
    """Area under the ROC curve of the image scores.

    Exact (ties count one half), equal to :func:`sklearn.metrics.roc_auc_score`.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
        1 (or True) for an anomalous image, 0 (or False) for a normal one.
    scores : array-like of shape (n_images,)
        Anomaly scores, higher is more anomalous; finite.

    Returns
    -------
    auroc : float
        In [0, 1]; 0.5 is chance.

    Raises
    ------
    ValueError
        If the shapes differ, the scores hold NaN or inf, the labels are not
        binary or only one class is present.

    Examples
    --------
    >>> from sklearn_musc.metrics import image_auroc
    >>> image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    return _image_ranking(y_true, scores).auroc()


def image_ap(y_true, scores):
    """Average precision of the image scores.

    ``sum_n (R_n - R_{n-1}) P_n`` over the distinct thresholds, exactly as
    :func:`sklearn.metrics.average_precision_score` (no interpolation).

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
        1 (or True) for an anomalous image, 0 (or False) for a normal one.
    scores : array-like of shape (n_images,)
        Anomaly scores, higher is more anomalous; finite.

    Returns
    -------
    ap : float
        In [0, 1].

    Raises
    ------
    ValueError
        If the shapes differ, the scores hold NaN or inf, the labels are not
        binary or only one class is present.

    Examples
    --------
    >>> from sklearn_musc.metrics import image_ap
    >>> round(image_ap([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
    0.8333
    """
    return _image_ranking(y_true, scores).average_precision()


def image_f1_max(y_true, scores):
    """Best F1 score over all thresholds of the image scores.

    The maximum over the points of :func:`sklearn.metrics.precision_recall_curve`
    of ``2 P R / (P + R)`` (a point with ``P + R = 0`` counts as 0).

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
        1 (or True) for an anomalous image, 0 (or False) for a normal one.
    scores : array-like of shape (n_images,)
        Anomaly scores, higher is more anomalous; finite.

    Returns
    -------
    f1_max : float
        In (0, 1].

    Raises
    ------
    ValueError
        If the shapes differ, the scores hold NaN or inf, the labels are not
        binary or only one class is present.

    Examples
    --------
    >>> from sklearn_musc.metrics import image_f1_max
    >>> round(image_f1_max([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
    0.8
    """
    return _image_ranking(y_true, scores).f1_max()


# ---------------------------------------------------------------------------
# pixel level
# ---------------------------------------------------------------------------

_PIXEL_PARAMS = """Parameters
    ----------
    masks : array-like of shape (n_images, height, width)
        Ground truth: a pixel is anomalous if its value is > 0 (booleans,
        0/1 or 0/255 masks all work; negative values are refused).
    maps : array-like of shape (n_images, height, width)
        Anomaly maps, higher is more anomalous; finite, same shape as
        ``masks`` (resize one to the other first). float32 maps are used as
        they are (no float64 copy). A single (height, width) image is
        accepted too."""


def pixel_auroc(masks, maps):
    """Area under the ROC curve over all pixels of all images.

    Exact (ties count one half), equal to :func:`sklearn.metrics.roc_auc_score`
    on the flattened masks and maps, but fast on tens of millions of pixels.

    {params}

    Returns
    -------
    auroc : float
        In [0, 1].

    Raises
    ------
    ValueError
        If the shapes differ, the maps hold NaN or inf, or the masks hold only
        one class.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_musc.metrics import pixel_auroc
    >>> masks = np.zeros((2, 4, 4), bool); masks[1, 1:3, 1:3] = True
    >>> maps = masks + np.linspace(0, 0.5, 32).reshape(2, 4, 4)
    >>> pixel_auroc(masks, maps)
    1.0
    """
    return _pixel_ranking(masks, maps)[0].auroc()


def pixel_ap(masks, maps):
    """Average precision over all pixels of all images.

    Exactly :func:`sklearn.metrics.average_precision_score` on the flattened
    masks and maps.

    {params}

    Returns
    -------
    ap : float
        In [0, 1].

    Raises
    ------
    ValueError
        If the shapes differ, the maps hold NaN or inf, or the masks hold only
        one class.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_musc.metrics import pixel_ap
    >>> masks = np.zeros((1, 2, 2), bool); masks[0, 0, 0] = True
    >>> pixel_ap(masks, np.array([[[0.9, 0.95], [0.1, 0.2]]]))
    0.5
    """
    return _pixel_ranking(masks, maps)[0].average_precision()


def pixel_f1_max(masks, maps):
    """Best F1 score over all thresholds, over all pixels of all images.

    {params}

    Returns
    -------
    f1_max : float
        In (0, 1].

    Raises
    ------
    ValueError
        If the shapes differ, the maps hold NaN or inf, or the masks hold only
        one class.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_musc.metrics import pixel_f1_max
    >>> masks = np.zeros((1, 2, 2), bool); masks[0, 0, 0] = True
    >>> round(pixel_f1_max(masks, np.array([[[0.9, 0.95], [0.1, 0.2]]])), 4)
    0.6667
    """
    return _pixel_ranking(masks, maps)[0].f1_max()


def pro_score(masks, maps, max_fpr=0.3):
    """Normalised area under the per-region-overlap (PRO) curve up to ``max_fpr``.

    The definition of the official MVTec AD evaluation (Bergmann et al.),
    computed exactly (every distinct score is a threshold):

    - the regions are the connected components of each image's mask, with
      8-connectivity (pixels touching at a corner are one region), as the
      official code labels them (``scipy.ndimage.label`` with a 3 x 3 block);
    - at a threshold ``t`` the overlap of a region is the fraction of its
      pixels with ``map >= t``, and PRO(t) is the mean overlap over all
      regions of all images (each region counts the same, whatever its size);
    - FPR(t) is the fraction of all normal pixels (of all images, also those
      beside the defects) with ``map >= t``;
    - the curve (FPR, PRO), from (0, 0) to (1, 1) with tied scores as one
      threshold, is integrated with the trapezoid rule from FPR 0 to
      ``max_fpr`` (linearly interpolated at ``max_fpr``) and divided by
      ``max_fpr``.

    Images without anomalous pixels only add normal pixels.

    {params}
    max_fpr : float in (0, 1], default=0.3
        False-positive-rate limit of the integration (0.3 in the papers).

    Returns
    -------
    pro : float
        In [0, 1].

    Raises
    ------
    ValueError
        If the shapes differ, the maps hold NaN or inf, the masks hold no
        anomalous region or no normal pixel, or ``max_fpr`` is out of range.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_musc.metrics import pro_score
    >>> masks = np.zeros((2, 8, 8), bool); masks[0, 1:3, 1:3] = True; masks[1, 5:, 5:] = True
    >>> pro_score(masks, masks.astype(np.float32))  # perfect maps
    1.0
    >>> maps = masks.astype(np.float32); maps[1] *= -1  # the second defect scores lowest
    >>> round(pro_score(masks, maps), 4)
    0.5
    """
    max_fpr = _check_max_fpr(max_fpr)
    ranking, n_regions = _pixel_ranking(masks, maps, regions=True)
    return ranking.pro(n_regions, max_fpr)


def pro_score_sampled(masks, maps, max_fpr=0.3, n_thresholds=200):
    """PRO as many papers' code computes it (CFlow style), for comparing with their numbers.

    Unlike :func:`pro_score` (the official definition), the curve is sampled
    at ``n_thresholds`` thresholds evenly spaced from the smallest map value
    (included) to the largest (excluded), a pixel counting as positive when
    its value is strictly above the threshold; the points with FPR below
    ``max_fpr`` are kept, their FPRs divided by the largest kept one (so the
    integration ends at 1 even when no point reaches ``max_fpr``), and the
    area under the rescaled curve taken with the trapezoid rule. The sampled
    number is usually a little higher than the official one.

    {params}
    max_fpr : float in (0, 1], default=0.3
        False-positive-rate limit.
    n_thresholds : int, default=200
        Number of thresholds.

    Returns
    -------
    pro : float
        In [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_musc.metrics import pro_score_sampled
    >>> masks = np.zeros((2, 8, 8), bool); masks[0, 1:3, 1:3] = True
    >>> maps = np.random.default_rng(0).random((2, 8, 8)); maps[masks] += 1
    >>> round(pro_score_sampled(masks, maps), 4)  # perfect separation, yet below 1: the curve starts late
    0.9797
    """
    max_fpr = _check_max_fpr(max_fpr)
    m, s = _check_pixel_inputs(masks, maps)
    n_pos = int(np.count_nonzero(m))
    _check_classes(n_pos, m.size - n_pos, "masks", "pixel")
    regions = []
    for i in np.flatnonzero(m.any(axis=(1, 2))):
        labels, k = ndimage.label(m[i], structure=_REGION_STRUCTURE)
        regions.extend((i, labels == j) for j in range(1, k + 1))
    normal = ~m
    lo, hi = float(s.min()), float(s.max())
    fprs, pros = [], []
    for t in lo + (hi - lo) * np.arange(n_thresholds) / n_thresholds:
        positive = s > t
        pros.append(np.mean([positive[i][region].mean() for i, region in regions]))
        fprs.append(np.count_nonzero(positive & normal) / np.count_nonzero(normal))
    fprs, pros = np.asarray(fprs), np.asarray(pros)
    keep = fprs < max_fpr
    if keep.sum() < 2 or fprs[keep].max() <= 0:
        return 0.0
    x, y = fprs[keep] / fprs[keep].max(), pros[keep]
    order = np.argsort(x, kind="stable")
    return float(np.trapezoid(y[order], x[order]))


for _f in (pixel_auroc, pixel_ap, pixel_f1_max, pro_score, pro_score_sampled):
    _f.__doc__ = _f.__doc__.replace("{params}", _PIXEL_PARAMS)
del _f


# ---------------------------------------------------------------------------
# everything at once
# ---------------------------------------------------------------------------

def evaluate(y_true, scores, masks=None, maps=None, pro=True, *, max_fpr=0.3):
    """All metrics of the paper at once (docs/algorithm.rst, "Evaluation").

    The pixels are sorted once for the four pixel metrics.

    Parameters
    ----------
    y_true : array-like of shape (n_images,)
        1 (or True) for an anomalous image, 0 (or False) for a normal one.
    scores : array-like of shape (n_images,)
        Image anomaly scores, higher is more anomalous.
    masks : array-like of shape (n_images, height, width), default=None
        Ground-truth masks (> 0 is anomalous). Pixel metrics need both
        ``masks`` and ``maps``.
    maps : array-like of shape (n_images, height, width), default=None
        Anomaly maps, same shape as ``masks``.
    pro : bool, default=True
        Also compute the PRO score (needs ``masks`` and ``maps``).
    max_fpr : float in (0, 1], default=0.3
        Integration limit of the PRO curve.

    Returns
    -------
    results : dict of str to float
        ``image_auroc``, ``image_f1max``, ``image_ap`` and, given masks and
        maps, ``pixel_auroc``, ``pixel_f1max``, ``pixel_ap`` and (if ``pro``)
        ``pro``; all fractions in [0, 1].

    Raises
    ------
    ValueError
        On any invalid input (see the single metrics), or if only one of
        ``masks`` and ``maps`` is given.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_musc.metrics import evaluate
    >>> masks = np.zeros((4, 8, 8), bool); masks[2, 1:4, 1:4] = True; masks[3, 5:, :2] = True
    >>> maps = masks + np.random.default_rng(0).uniform(0, 0.5, masks.shape)
    >>> res = evaluate([0, 0, 1, 1], maps.max(axis=(1, 2)), masks, maps)
    >>> sorted(res)
    ['image_ap', 'image_auroc', 'image_f1max', 'pixel_ap', 'pixel_auroc', 'pixel_f1max', 'pro']
    >>> res["pixel_auroc"], res["pro"]
    (1.0, 1.0)
    """
    if (masks is None) != (maps is None):
        missing = "maps" if maps is None else "masks"
        raise ValueError(f"pixel metrics need both masks and maps; {missing} is None")
    if pro:
        max_fpr = _check_max_fpr(max_fpr)
    image = _image_ranking(y_true, scores)
    results = {
        "image_auroc": image.auroc(),
        "image_f1max": image.f1_max(),
        "image_ap": image.average_precision(),
    }
    if masks is None:
        return results
    pixel, n_regions = _pixel_ranking(masks, maps, regions=bool(pro))
    results["pixel_auroc"] = pixel.auroc()
    results["pixel_f1max"] = pixel.f1_max()
    results["pixel_ap"] = pixel.average_precision()
    if pro:
        results["pro"] = pixel.pro(n_regions, max_fpr)
    return results


# ---------------------------------------------------------------------------
# scikit-learn model selection
# ---------------------------------------------------------------------------

_IMAGE_METRICS = {
    "image_auroc": image_auroc,
    "image_ap": image_ap,
    "image_f1_max": image_f1_max,
}


def _final_anomaly_scores(estimator):
    step = estimator[-1] if hasattr(estimator, "steps") else estimator
    scores = getattr(step, "anomaly_scores_", None)
    if scores is None:
        raise AttributeError(f"{type(step).__name__} has no anomaly_scores_: the scorer needs a "
                             "fitted detector that stores the scores of the batch it was fitted on")
    return np.asarray(scores)


class _AnomalyScorer:
    """``scorer(estimator, X, y)``: a metric of the fitted detector's ``anomaly_scores_``."""

    def __init__(self, metric):
        self.metric = metric

    def __call__(self, estimator, X, y=None):
        if y is None:
            raise ValueError("anomaly_scorer needs the image labels y (1 = anomalous, 0 = normal); "
                             "pass y to the search's fit")
        scores = _final_anomaly_scores(estimator)
        y = np.asarray(y)
        if scores.shape[0] != y.shape[0]:
            raise ValueError(
                f"the detector scored {scores.shape[0]} images but this fold has {y.shape[0]}: "
                "the detectors are transductive (they score the batch they are fitted on), so "
                "use a CV splitter that gives the same indices for training and testing, "
                "e.g. cv=[(np.arange(n), np.arange(n))]")
        return self.metric(y, scores)

    def __repr__(self):
        return f"anomaly_scorer({getattr(self.metric, '__name__', self.metric)!s})"


def anomaly_scorer(metric=image_auroc):
    """A scikit-learn scorer from an image metric and a detector's ``anomaly_scores_``.

    The detectors of this package are transductive: ``fit(X)`` scores the
    batch ``X`` itself and stores the scores in ``anomaly_scores_`` (of the
    last step, for a :class:`~sklearn.pipeline.Pipeline`). The returned
    ``scorer(estimator, X, y)`` evaluates ``metric(y, anomaly_scores_)`` of
    the estimator just fitted, so in a search it must be fitted on the very
    images it is scored on: use a CV splitter that gives the same indices for
    training and testing, e.g. ``cv=[(np.arange(n), np.arange(n))]`` (a
    different fold size is refused; different indices of the same size cannot
    be detected). ``y`` holds the image labels, 1 = anomalous.

    The metrics themselves have the ``(y_true, y_score)`` signature, so for
    inductive estimators :func:`sklearn.metrics.make_scorer` works too, e.g.
    ``make_scorer(image_auroc, response_method="decision_function")`` when
    the decision function is higher for anomalies.

    Parameters
    ----------
    metric : callable or str, default=image_auroc
        ``metric(y_true, scores) -> float``, higher is better, e.g.
        :func:`image_auroc`, :func:`image_ap` or :func:`image_f1_max`, or one
        of their names.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y) -> float``, for ``scoring=`` of
        :class:`~sklearn.model_selection.GridSearchCV` and friends.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.base import BaseEstimator
    >>> from sklearn.model_selection import GridSearchCV
    >>> from sklearn_musc.metrics import anomaly_scorer, image_auroc
    >>> class Column(BaseEstimator):  # a toy transductive detector
    ...     def __init__(self, j=0):
    ...         self.j = j
    ...     def fit(self, X, y=None):
    ...         self.anomaly_scores_ = X[:, self.j]
    ...         return self
    >>> X = np.random.default_rng(0).normal(size=(20, 3)); y = (X[:, 2] > 0).astype(int)
    >>> idx = np.arange(len(X))
    >>> search = GridSearchCV(Column(), {"j": [0, 1, 2]}, scoring=anomaly_scorer(image_auroc),
    ...                       cv=[(idx, idx)]).fit(X, y)
    >>> search.best_params_, float(search.best_score_)
    ({'j': 2}, 1.0)
    """
    if isinstance(metric, str):
        try:
            metric = _IMAGE_METRICS[metric]
        except KeyError:
            raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(_IMAGE_METRICS)} "
                             "or pass a callable") from None
    if not callable(metric):
        raise TypeError(f"metric must be callable or a metric name, got {metric!r}")
    return _AnomalyScorer(metric)
