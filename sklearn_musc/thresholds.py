"""Turning anomaly scores into labels and maps into masks: the one place the detector and the re-scorer share.

``threshold_scores`` sets a batch's threshold from ``contamination`` (a
share: a quantile, as in scikit-learn's ``IsolationForest``) or, for
``"auto"``, from :func:`auto_threshold`, the label-free rule; its constants
are keyword arguments (a study calls it with other values; nothing
overwrites this module's globals). ``defect_masks`` cuts each flagged
image's map at half height.

The label-free rule, in two steps (why each step and each default was chosen,
with the numbers: ``benchmarks/RESULTS.md``, "The label rule"; the study is
``studies/labels.py``):

1. Two clusters? A two-component Gaussian mixture of the robustly
   standardised scores must beat one Gaussian AND one Gumbel (the law of
   maxima: image scores are maxima of patch scores, so a clean batch is one
   right-skewed cluster, which two Gaussians fit better than one as the batch
   grows) by ``bic_margin``, and each component must hold at least
   ``min_weight`` of the batch. Then the lower component's share of the batch
   is taken as normal and the rest is flagged: the threshold is the quantile
   of the scores at the lower component's weight.
2. Otherwise the normal images are the majority, and the rule is robust
   ``median + n_sigma * s_up``, where ``s_up`` is 1.4826 x the median
   deviation of the scores ABOVE the median (a semi-MAD): image scores are
   skewed to the right and the upper semi-MAD follows that tail.

What the rule cannot do: tell a defect-heavy batch whose defects overlap the
normal images (one broad cluster) from a clean batch of a product with
naturally spread scores; it then treats it as a clean one and flags only its
clear outliers.

Ties (many identical images, MAD = 0) must not turn every image above the
median into an anomaly: the scale has a floor (``robust_scale``).
"""


import numpy as np

__all__ = ["auto_threshold"]

# Scale factor that makes the median absolute deviation a consistent estimate
# of the standard deviation for normally distributed scores.
_MAD_TO_STD = 1.4826
# Mean absolute deviation to standard deviation (normal): sqrt(pi / 2).
_MEAN_AD_TO_STD = 1.2533
# Fewer images than this: no mixture is fitted (two clusters of 3 are noise).
_MIN_MIXTURE = 8
# Masks: the share of the way from an image's background to its peak where a
# defect's outline is drawn (half height; chosen on TUNE, see defect_masks).
_MASK_HEIGHT = 0.5
# Relative floor of the scale: float32 scores of identical images differ by
# rounding only.
_REL_FLOOR = 1e-6


def robust_scale(scores, centre, upper=False):
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


def _two_clusters(scores, centre, scale, bic_margin, min_weight, skew_guard):
    """The lower cluster's share of the batch when the scores form two clusters, else None.

    Gaussian mixtures with one and two components on the standardised scores
    (deterministic: k-means initialisation, fixed seed); two are kept only
    when their BIC is lower by ``bic_margin`` and each component holds at
    least ``min_weight`` of the batch (a few high images are the production
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
    if not (two.bic(x) + bic_margin < one.bic(x) and two.weights_.min() >= min_weight):
        return None
    share = float(two.weights_[int(np.argmin(two.means_.ravel()))])  # the lower cluster's
    if not skew_guard:
        return share
    # Image scores are maxima over patches: a clean batch is one right-skewed
    # cluster, which two Gaussians describe better than one as the batch
    # grows. Two clusters must also beat one Gumbel (the law of maxima) by
    # the same margin.
    from scipy.stats import gumbel_r

    z = x.ravel()
    loc, sc = gumbel_r.fit(z)
    bic_gumbel = -2.0 * gumbel_r.logpdf(z, loc, sc).sum() + 2.0 * np.log(len(z))
    return share if two.bic(x) + bic_margin < bic_gumbel else None


def auto_threshold(scores, *, n_sigma=4.5, bic_margin=10.0, min_weight=0.2, skew_guard=True):
    """The label-free threshold of ``contamination="auto"``.

    Two clusters of scores: all but the lower cluster's share is flagged.
    Otherwise: ``median + n_sigma * s_up`` (the upper semi-MAD). The
    defaults were chosen on the TUNE categories of MVTec AD and confirmed on
    the others (``benchmarks/RESULTS.md``, "The label rule").

    Parameters
    ----------
    scores : array-like of shape (n_images,)
        Anomaly scores (higher = more abnormal).
    n_sigma : float, default=4.5
        Multiplier of the upper semi-MAD in the one-cluster rule.
    bic_margin : float, default=10.0
        How much lower the two-component mixture's BIC must be than one
        Gaussian's (and one Gumbel's) for the scores to be two clusters.
    min_weight : float, default=0.2
        The smallest share of the batch each of two clusters must hold (a few
        high images are the production case, which the one-cluster rule
        handles; a lone low image is not a normal population).
    skew_guard : bool, default=True
        Whether two clusters must also beat one Gumbel (a clean batch of
        maxima is one right-skewed cluster).

    Returns
    -------
    threshold : float
        Images scoring strictly above it are anomalous.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_musc.thresholds import auto_threshold
    >>> scores = np.r_[np.linspace(1.0, 1.2, 40), 3.0]
    >>> bool(1.2 < auto_threshold(scores) < 3.0)
    True
    """
    scores = np.asarray(scores, dtype=np.float64)
    centre = float(np.median(scores))
    scale, tied = robust_scale(scores, centre)
    share = None if tied else _two_clusters(scores, centre, scale, bic_margin, min_weight, skew_guard)
    if share is not None:
        # two clusters: flag all but the lowest share (the normal images)
        return float(np.quantile(scores, share))
    return centre + n_sigma * robust_scale(scores, centre, upper=True)[0]


def labels_above(scores, threshold):
    """Labels of anomaly ``scores`` at ``threshold``: -1 strictly above it, 1 otherwise.

    The one rule that turns a threshold into labels (scikit-learn's outlier
    convention): every estimator's ``labels_`` and masks, and the command
    line's labels of new images, use it.
    """
    return np.where(np.asarray(scores) > threshold, -1, 1)


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
    return float(threshold), labels_above(scores, threshold)


def defect_masks(maps, labels):
    """Binary defect masks of the images labelled -1 (the others get empty masks).

    A pixel of an image labelled -1 is marked when it is above half-way
    (``_MASK_HEIGHT``) from the image's background, its median map value (a
    defect is a small part of its image), to its peak: the defect's "half
    height", as a full width at half maximum. So an image labelled -1 always
    gets a mask (unless its map is flat), one labelled 1 never does, and the
    masks agree with the labels whichever rule or threshold set them.
    The level's height was chosen on TUNE (``benchmarks/RESULTS.md``, "The
    label rule").
    """
    maps = np.asarray(maps)
    shape = (-1,) + (1,) * (maps.ndim - 1)
    if maps.size == 0:
        return np.zeros(maps.shape, dtype=bool)
    flat = maps.reshape(len(maps), -1).astype(np.float64)
    background = np.median(flat, axis=1)
    level = background + _MASK_HEIGHT * (flat.max(axis=1) - background)
    return (maps > level.reshape(shape)) & (np.asarray(labels) == -1).reshape(shape)
