"""Turning anomaly scores into labels, shared by the detector and the re-scorer."""

import numpy as np

# Scale factor that makes the median absolute deviation a consistent estimate
# of the standard deviation for normally distributed scores.
_MAD_TO_STD = 1.4826
_AUTO_N_SIGMA = 3.0


def threshold_scores(scores, contamination):
    """Return ``(threshold, labels)`` for anomaly ``scores`` (higher = worse).

    Images whose score is strictly above ``threshold`` are labelled -1, the
    others 1 (scikit-learn's outlier convention).

    ``contamination`` a float: the threshold is the ``1 - contamination``
    quantile of the scores (linear interpolation, as in scikit-learn's
    IsolationForest and LocalOutlierFactor), so about that share is flagged.

    ``contamination="auto"``: a robust three-sigma rule,
    ``median + 3 * 1.4826 * MAD``. It needs no labels and assumes only that
    fewer than half of the images are anomalous, so that the median and the
    MAD describe the normal images: it then flags images whose score lies
    beyond the normal images' spread and flags none in a clean batch with
    well-behaved scores. When most images of a batch are defective, give the
    expected share as a float instead.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if contamination == "auto":
        median = np.median(scores)
        mad = np.median(np.abs(scores - median))
        threshold = median + _AUTO_N_SIGMA * _MAD_TO_STD * mad
    else:
        threshold = np.percentile(scores, 100.0 * (1.0 - contamination))
    labels = np.where(scores > threshold, -1, 1)
    return float(threshold), labels
