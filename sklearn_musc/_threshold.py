"""Turning anomaly scores into labels and maps into masks, shared by the detector and the re-scorer.

The label-free rule (``contamination="auto"``) was chosen on MVTec AD
(``studies/labels.py``; measurements in ``benchmarks/RESULTS.md``) to hold on
three kinds of batch: clean (only good parts), production-like (about 10 %
defective) and defect-heavy (60-75 % defective, an MVTec AD test folder):

1. Two clusters? A two-component Gaussian mixture of the image scores is
   compared with one Gaussian by BIC; when two components win by a clear
   margin (``_BIC_MARGIN``), the batch holds a normal and a defective
   population (the defect-heavy case, where the median and MAD describe the
   defects, and the old three-sigma rule flagged nothing in 7 of 8
   categories). The threshold is where the upper component becomes the more
   probable one.
2. Otherwise the normal images are the majority, and the rule is robust
   ``median + c * 1.4826 * MAD`` with ``c = _N_SIGMA``. In a clean batch,
   which one Gaussian describes well, this flags only clear outliers.

Ties (many identical images, MAD = 0) must not turn every image above the
median into an anomaly: the scale has a floor (``_robust_scale``).
"""

import numbers

import numpy as np

# Scale factor that makes the median absolute deviation a consistent estimate
# of the standard deviation for normally distributed scores.
_MAD_TO_STD = 1.4826
# Mean absolute deviation to standard deviation (normal): sqrt(pi / 2).
_MEAN_AD_TO_STD = 1.2533
# Robust-rule multiplier and mixture decision margin, chosen on the 8 TUNE
# categories of studies/_cache.py (see benchmarks/RESULTS.md).
_N_SIGMA = 3.0
_BIC_MARGIN = 4.0
# Fewer images than this: no mixture is fitted (two clusters of 3 are noise).
_MIN_MIXTURE = 8
_SPLIT = "posterior"
# Each cluster must hold this share of the batch: a lone low image is not a
# normal population (it would flag the rest), and a few high images are the
# production case, which the robust rule handles.
_MIN_WEIGHT = 0.2
# Relative floor of the scale: float32 scores of identical images differ by
# rounding only.
_REL_FLOOR = 1e-6


def check_threshold(threshold, *, nonnegative=False):
    """Validate a ``threshold`` parameter: None or a finite real number."""
    if threshold is None:
        return None
    if (
        not isinstance(threshold, numbers.Real)
        or isinstance(threshold, bool)
        or not np.isfinite(threshold)
        or (nonnegative and threshold < 0)
    ):
        kind = "a finite number >= 0 (scores are distances)" if nonnegative else "a finite number"
        raise ValueError(f"threshold must be None or {kind}, got {threshold!r}")
    return float(threshold)


def _robust_scale(scores, centre):
    """Spread of the scores around ``centre`` (a standard deviation for normal scores).

    1.4826 x MAD; when more than half of the scores tie (MAD = 0) the mean
    absolute deviation, and never less than a relative float-rounding floor,
    so that scores equal up to rounding are not told apart. Also returns
    whether the scores tie (then no mixture is fitted: two "clusters" a
    rounding error apart would split identical images).
    """
    dev = np.abs(scores - centre)
    scale = _MAD_TO_STD * np.median(dev)
    floor = _REL_FLOOR * max(1.0, abs(centre))
    if scale <= floor:  # ties: no spread to model a mixture on
        return max(_MEAN_AD_TO_STD * dev.mean(), floor), True
    return scale, False


def _mixture_threshold(scores, centre, scale):
    """Threshold between two clusters of the scores, or None when one describes them.

    Gaussian mixtures with one and two components on the standardised scores
    (deterministic: k-means initialisation, fixed seed); two are kept only
    when their BIC is lower by ``_BIC_MARGIN``. The threshold is the lowest
    score where the upper component's posterior exceeds one half.
    """
    if len(scores) < _MIN_MIXTURE:
        return None
    from sklearn.mixture import GaussianMixture

    x = ((scores - centre) / scale).reshape(-1, 1)
    if np.ptp(x) <= 0:
        return None
    one = GaussianMixture(1).fit(x)
    two = GaussianMixture(2, n_init=3, random_state=0).fit(x)
    if not two.bic(x) + _BIC_MARGIN < one.bic(x) or two.weights_.min() < _MIN_WEIGHT:
        return None
    upper = int(np.argmax(two.means_.ravel()))
    if _SPLIT == "lower":
        lower = 1 - upper
        mu, sd = two.means_.ravel()[lower], np.sqrt(two.covariances_.ravel()[lower])
        return float(centre + scale * (mu + _N_SIGMA * sd))
    grid = np.linspace(x.min(), x.max(), 2048).reshape(-1, 1)
    above = two.predict_proba(grid)[:, upper] > 0.5
    # the upper component must win from some point on and keep winning
    if not above[-1] or above.all():
        return None
    first = len(above) - int(np.argmin(above[::-1]))  # start of the last run of True
    return float(centre + scale * 0.5 * (grid[first - 1, 0] + grid[first, 0]))


def auto_threshold(scores):
    """The label-free threshold of ``contamination="auto"`` (see the module docstring)."""
    scores = np.asarray(scores, dtype=np.float64)
    centre = float(np.median(scores))
    scale, tied = _robust_scale(scores, centre)
    split = None if tied else _mixture_threshold(scores, centre, scale)
    if split is not None:
        return split
    return centre + _N_SIGMA * scale


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


def defect_masks(maps, labels, pixel_threshold):
    """Binary defect masks: pixels above ``pixel_threshold`` in images labelled -1.

    An image labelled normal gets an empty mask, so masks and labels agree.
    """
    maps = np.asarray(maps)
    return (maps > pixel_threshold) & (np.asarray(labels) == -1).reshape((-1,) + (1,) * (maps.ndim - 1))
