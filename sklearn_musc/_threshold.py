"""Turning anomaly scores into labels and maps into masks, shared by the detector and the re-scorer.

The label-free rule (``contamination="auto"``) was chosen on MVTec AD
(``studies/labels.py``; measurements in ``benchmarks/RESULTS.md``) for three
kinds of batch: clean (only good parts), production-like (about 10 %
defective) and defect-heavy (60-85 % defective, an MVTec AD test folder):

1. Two clusters? A two-component Gaussian mixture of the robustly
   standardised scores must beat one Gaussian AND one Gumbel (the law of
   maxima: image scores are maxima of patch scores, so a clean batch is one
   right-skewed cluster, which two Gaussians fit better than one as the
   batch grows) by ``_BIC_MARGIN``, and each component must hold at least
   ``_MIN_WEIGHT`` of the batch. Then the lower component's share of the
   batch is taken as normal and the rest is flagged: the threshold is the
   quantile of the scores at the lower component's weight. On the
   defect-heavy MVTec AD batches where this fires (bottle, leather, tile)
   it is within 3 % of the F1-max. Measured alternatives: the posterior
   crossing of the mixture (the first cut) or "lower mean + c sd" lose
   40-50 % where the clusters overlap; "all but the lowest 20 %" (the
   F1-best for overlapping defect-heavy batches) equals this on MVTec AD but
   flags 80 % of a batch with 25 % well-separated defects (the CLI demo).
   Without the Gumbel guard (``_SKEW_GUARD``) the mixture also fires on the
   overlapping defect-heavy batches (with the default scores: heavy 0.551
   instead of 0.370 over 15 categories, masks 0.539 instead of 0.388,
   production-like 0.494 instead of 0.510, clean unchanged), but also on 9 of 40
   synthetic right-skewed (Gumbel) clean batches of 150 images (2 of 40 of
   60), where it would flag the upper component's 20 % or more. No real
   clean batch was larger than 60 images; the guard is kept for safety.
2. Otherwise the normal images are the majority, and the rule is robust
   ``median + c * s_up`` with ``c = _N_SIGMA``, where ``s_up`` is 1.4826 x
   the median deviation of the scores ABOVE the median (a semi-MAD). Image
   scores are maxima of patch scores, skewed to the right; the upper
   semi-MAD follows that tail, so a clean batch has fewer false alarms than
   with the symmetric MAD at the same production recall (measured on the
   paper's scores: 3 vs 9 of 416 clean images at c = 3; c = 3.5 with the MAD
   still flags 5). ``c = 4.5`` was chosen again on the TUNE categories for
   the library's default scores (SNAMD, topmin_max 0.2, RsCIN on the salient
   feature with k = 1, 7), which smooth the clean batches' noise less evenly:
   the best production-like F1 with at most 1 % of the clean images flagged
   (1 of 244; c = 3 flagged 4, c = 3.5 and 4 flagged 3).

What the rule cannot do: tell a defect-heavy batch whose defects overlap the
normal images (one broad cluster, no two-component split) from a clean batch
of a product with naturally spread scores; it then treats it as a clean one
and flags only its clear outliers (see RESULTS.md for the categories).

Ties (many identical images, MAD = 0) must not turn every image above the
median into an anomaly: the scale has a floor (``_robust_scale``).
"""


import numpy as np

# Scale factor that makes the median absolute deviation a consistent estimate
# of the standard deviation for normally distributed scores.
_MAD_TO_STD = 1.4826
# Mean absolute deviation to standard deviation (normal): sqrt(pi / 2).
_MEAN_AD_TO_STD = 1.2533
# Robust-rule multiplier and mixture decision margin, chosen on the 8 TUNE
# categories of studies/_cache.py (see benchmarks/RESULTS.md).
_N_SIGMA = 4.5
_BIC_MARGIN = 10.0
# Fewer images than this: no mixture is fitted (two clusters of 3 are noise).
_MIN_MIXTURE = 8
# Two clusters must also beat one Gumbel (see the module docstring).
_SKEW_GUARD = True
# Each cluster must hold this share of the batch: a lone low image is not a
# normal population (it would flag the rest), and a few high images are the
# production case, which the robust rule handles.
_MIN_WEIGHT = 0.2
# Masks: the share of the way from an image's background to its peak where a
# defect's outline is drawn (half height; chosen on TUNE, see defect_masks).
_MASK_HEIGHT = 0.5
# Relative floor of the scale: float32 scores of identical images differ by
# rounding only.
_REL_FLOOR = 1e-6


def _robust_scale(scores, centre, upper=False):
    """Spread of the scores around ``centre`` (a standard deviation for normal scores).

    1.4826 x MAD (``upper``: of the scores at or above ``centre`` only, the
    semi-MAD of the right tail); when more than half of them tie (MAD = 0)
    the mean absolute deviation, and never less than a relative
    float-rounding floor, so that scores equal up to rounding are not told
    apart. Also returns whether the scores tie (then no mixture is fitted:
    two "clusters" a rounding error apart would split identical images).
    """
    dev = scores - centre
    dev = dev[dev >= 0] if upper else np.abs(dev)
    scale = _MAD_TO_STD * np.median(dev)
    floor = _REL_FLOOR * max(1.0, abs(centre))
    if scale <= floor:  # ties: no spread to model a mixture on
        return max(_MEAN_AD_TO_STD * dev.mean(), floor), True
    return scale, False


def _two_clusters(scores, centre, scale):
    """The lower cluster's share of the batch when the scores form two clusters, else None.

    Gaussian mixtures with one and two components on the standardised scores
    (deterministic: k-means initialisation, fixed seed); two are kept only
    when their BIC is lower by ``_BIC_MARGIN`` and each component holds at
    least ``_MIN_WEIGHT`` of the batch (a few high images are the production
    case, which the robust rule handles).
    """
    if len(scores) < _MIN_MIXTURE:
        return None
    from sklearn.mixture import GaussianMixture

    x = ((scores - centre) / scale).reshape(-1, 1)
    if np.ptp(x) <= 0:
        return None
    one = GaussianMixture(1).fit(x)
    two = GaussianMixture(2, n_init=3, random_state=0).fit(x)
    if not (two.bic(x) + _BIC_MARGIN < one.bic(x) and two.weights_.min() >= _MIN_WEIGHT):
        return None
    share = float(two.weights_[int(np.argmin(two.means_.ravel()))])  # the lower cluster's
    if not _SKEW_GUARD:
        return share
    # Image scores are maxima over patches: a clean batch is one right-skewed
    # cluster, which two Gaussians describe better than one as the batch
    # grows. Two clusters must also beat one Gumbel (the law of maxima) by
    # the same margin.
    from scipy.stats import gumbel_r

    z = x.ravel()
    loc, sc = gumbel_r.fit(z)
    bic_gumbel = -2.0 * gumbel_r.logpdf(z, loc, sc).sum() + 2.0 * np.log(len(z))
    return share if two.bic(x) + _BIC_MARGIN < bic_gumbel else None


def auto_threshold(scores):
    """The label-free threshold of ``contamination="auto"`` (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    centre = float(np.median(scores))
    scale, tied = _robust_scale(scores, centre)
    share = None if tied else _two_clusters(scores, centre, scale)
    if share is not None:
        # two clusters: flag all but the lowest share (the normal images)
        return float(np.quantile(scores, share))
    return centre + _N_SIGMA * _robust_scale(scores, centre, upper=True)[0]


def threshold_scores(scores, contamination, threshold=None):
    """Return ``(threshold, labels)`` for anomaly ``scores`` (higher = worse).

    Images whose score is strictly above ``threshold`` are labelled -1, the
    others 1 (scikit-learn's outlier convention).

    ``threshold`` a number: used as it is (learned on another batch).
    Otherwise ``contamination`` a float: the threshold is the
    ``1 - contamination`` quantile of the scores (linear interpolation, as in
    scikit-learn's IsolationForest and LocalOutlierFactor), so about that
    share is flagged; ``"auto"``: :func:`auto_threshold`.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity; no threshold can be set")
    if threshold is not None:
        threshold = float(threshold)
    elif contamination == "auto":
        threshold = auto_threshold(scores)
    else:
        threshold = float(np.percentile(scores, 100.0 * (1.0 - contamination)))
    labels = np.where(scores > threshold, -1, 1)
    return float(threshold), labels


def defect_masks(maps, labels):
    """Binary defect masks of the images labelled -1 (the others get empty masks).

    A pixel of an image labelled -1 is marked when it is above half-way
    (``_MASK_HEIGHT``) from the image's background, its median map value (a
    defect is a small part of its image), to its peak: the defect's "half
    height", as a full width at half maximum. So an image labelled -1 always
    gets a mask (unless its map is flat), one labelled 1 never does, and the
    masks agree with the labels whichever rule or threshold set them.
    Measured on MVTec AD (pixel F1 / F1-max, studies/labels.py): with the
    true image labels these masks reach 0.87 on the defect-heavy batches
    (0.98 TUNE, 0.76 confirm); the level's height was chosen on TUNE (0.3 /
    0.4 / 0.5 / 0.6 / 0.7 of the way: 0.87 / 0.96 / 0.98 / 0.93 / 0.79).
    An earlier cut also kept every pixel below the image threshold unmarked:
    with the label-free rule's labels that gave 0.27 heavy and 0.29
    production-like against 0.39 and 0.37 without it (better on both halves),
    and it left empty masks on images that RsCIN flags below the detector's
    threshold.
    """
    maps = np.asarray(maps)
    shape = (-1,) + (1,) * (maps.ndim - 1)
    if maps.size == 0:
        return np.zeros(maps.shape, dtype=bool)
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    background = np.median(flat, axis=1)
    level = background + _MASK_HEIGHT * (flat.max(axis=1) - background)
    return (maps > level.reshape(shape)) & (np.asarray(labels) == -1).reshape(shape)
