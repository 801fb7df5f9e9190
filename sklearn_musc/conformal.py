"""Conformal calibration against known-good parts: p-values, thresholds, false-discovery control.

Usable behind any scorer (PyOD, PatchCore, an IsolationForest): give it the
scores of known-good parts and of the parts to test.

The maths of README "Decisions you can trust", apart from the estimators
that use it. A *calibration set* holds the scores of parts known or accepted
to be good, computed by the same function that scores a new part (see
:class:`~sklearn_musc.MutualScoringDetector` for how mutual scoring gets such scores).
When a new good part and the calibration parts are exchangeable, the
conformal p-value

    p = (1 + #{i : c_i >= s}) / (n + 1)

satisfies ``P(p <= alpha) <= alpha`` for every ``alpha`` and every ``n``
(Vovk, Gammerman and Shafer 2005; Bates, Candes, Lei, Romano and Zrnic
2023): the new score is equally likely to take any rank among the ``n + 1``,
and ties only make ``p`` larger. Flagging ``p <= alpha`` is the same as
flagging the scores strictly above one order statistic of the calibration
scores (:func:`conformal_threshold`), so a fixed threshold carries the
guarantee. Benjamini-Hochberg on p-values that share one calibration set
keeps the false-discovery rate at most ``q`` (those p-values are positively
dependent, PRDS: Bates et al., theorem 2).
"""

import math
import numbers

import numpy as np

__all__ = ["benjamini_hochberg", "conformal_pvalues", "conformal_threshold", "fdr_decision", "min_calibration_size"]


def check_level(value, name):
    """``value`` as a float in (0, 1), else a one-line ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def _calibration(calibration):
    c = np.asarray(calibration, dtype=np.float64)
    if c.ndim != 1 or len(c) == 0:
        raise ValueError(f"the calibration scores must be a non-empty 1-D array, got shape {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("the calibration scores contain NaN or infinity")
    return np.sort(c)


def conformal_pvalues(calibration, scores):
    """Conformal p-values of ``scores`` against the calibration scores.

    Parameters
    ----------
    calibration : array-like of shape (n,)
        Scores of known-good parts, higher = more anomalous.
    scores : array-like of shape (m,)
        Scores of the parts to test, by the same function.

    Returns
    -------
    pvalues : ndarray of shape (m,)
        ``(1 + #{i : calibration_i >= score}) / (n + 1)``, in ``[1 / (n + 1), 1]``.
    """
    c = _calibration(calibration)
    s = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(s).all():
        raise ValueError("the scores to test contain NaN or infinity; no p-value can be given")
    at_least = len(c) - np.searchsorted(c, s, side="left")  # calibration scores >= s
    return (1.0 + at_least) / (len(c) + 1.0)


def min_calibration_size(alpha):
    """Fewest calibration scores with which a p-value can reach ``alpha`` (``n + 1 >= 1 / alpha``).

    Parameters
    ----------
    alpha : float in (0, 1)
        The false-alarm rate asked for.

    Returns
    -------
    n : int
        The smallest ``n`` with ``1 / (n + 1) <= alpha``.
    """
    n = max(0, math.ceil(1.0 / alpha) - 1)
    while n > 0 and 1.0 / n <= alpha:  # float rounding of 1 / alpha
        n -= 1
    return n


def _largest_count(n, alpha):
    """The largest ``g`` in ``[-1, n - 1]`` with ``(1 + g) / (n + 1) <= alpha``, as the p-values compute it."""
    g = min(n - 1, int(math.floor(alpha * (n + 1))) - 1)
    while g >= 0 and (1.0 + g) / (n + 1.0) > alpha:
        g -= 1
    while g + 1 <= n - 1 and (2.0 + g) / (n + 1.0) <= alpha:
        g += 1
    return g


def conformal_threshold(calibration, alpha, what="the calibration set"):
    """The score above which a part's conformal p-value is at most ``alpha``.

    ``p <= alpha`` holds exactly when at most ``g`` calibration scores are
    ``>= s``, with ``g`` the largest count such that ``(1 + g) / (n + 1) <=
    alpha``; that is when ``s`` is strictly above the ``(g + 1)``-th largest
    calibration score, which is returned. So ``score > threshold`` and
    ``conformal_pvalues(...) <= alpha`` flag the same parts.

    Parameters
    ----------
    calibration : array-like of shape (n,)
        Scores of known-good parts, higher = more anomalous.
    alpha : float in (0, 1)
        The false-alarm rate.
    what : str, default="the calibration set"
        How the error message names the calibration set.

    Returns
    -------
    threshold : float
        Parts scoring strictly above it have ``p <= alpha``.

    Raises
    ------
    ValueError
        When ``n + 1 < 1 / alpha``: no p-value can be that small, and a
        threshold that flags nothing would be silently useless.
    """
    alpha = check_level(alpha, "alpha")
    c = _calibration(calibration)
    g = _largest_count(len(c), alpha)
    if g < 0:
        raise ValueError(
            f"alpha={alpha:g} needs at least {min_calibration_size(alpha)} calibration images "
            f"(n + 1 >= 1 / alpha), {what} has {len(c)}: raise alpha or calibrate on more good parts"
        )
    return float(c[len(c) - 1 - g])


def benjamini_hochberg(pvalues, q):
    """Benjamini-Hochberg at level ``q``: which hypotheses are rejected, and the adjusted p-values.

    Rejects the ``k`` smallest p-values, ``k`` the largest with
    ``p_(k) <= q k / m``; the adjusted p-values (as
    :func:`scipy.stats.false_discovery_control` gives them) are
    ``min_{j >= i} min(1, m p_(j) / j)``, and ``adjusted <= q`` is the same
    rejection set.

    Parameters
    ----------
    pvalues : array-like of shape (m,)
        One p-value per hypothesis (per part), in [0, 1].
    q : float in (0, 1)
        The false-discovery level.

    Returns
    -------
    rejected : ndarray of bool, shape (m,)
        The parts flagged.
    adjusted : ndarray of float, shape (m,)
        Benjamini-Hochberg adjusted p-values.
    """
    q = check_level(q, "fdr")
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D, got shape {p.shape}")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError("pvalues must lie in [0, 1] (no NaN)")
    m = len(p)
    if m == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, m + 1)
    adjusted_sorted = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    below = np.nonzero(p[order] <= q * np.arange(1, m + 1) / m)[0]
    rejected = np.zeros(m, dtype=bool)
    if len(below):
        rejected[order[: below[-1] + 1]] = True
    return rejected, adjusted


def fdr_decision(scores, pvalues, reference_scores, q):
    """A batch's threshold and labels by Benjamini-Hochberg at level ``q``.

    The detectors' rule with ``fdr`` (:class:`~sklearn_musc.MutualScoringDetector`,
    :class:`~sklearn_musc.CrossModalDetector`): the parts whose p-values
    Benjamini-Hochberg rejects are flagged, and the threshold is the one
    score that separates them. P-values fall as scores rise, so the flagged
    parts are those scored above every other one: the threshold is the
    largest score not flagged, or, when every part is flagged, the
    conformal threshold of the references at ``q`` (which lies below them all).

    Parameters
    ----------
    scores : array-like of shape (m,)
        The batch's anomaly scores.
    pvalues : array-like of shape (m,)
        Their conformal p-values against the references.
    reference_scores : array-like of shape (n,)
        The references' scores (the calibration set of ``pvalues``).
    q : float in (0, 1)
        The false-discovery level.

    Returns
    -------
    threshold : float
        Scores above it are flagged.
    labels : ndarray of int, shape (m,)
        -1 for a flagged part, 1 otherwise.

    Examples
    --------
    >>> from sklearn_musc.conformal import conformal_pvalues, fdr_decision
    >>> refs, batch = np.arange(1.0, 41.0), np.array([5.0, 50.0, 60.0, 20.0])
    >>> threshold, labels = fdr_decision(batch, conformal_pvalues(refs, batch), refs, 0.1)
    >>> threshold, labels.tolist()
    (20.0, [1, -1, -1, 1])
    """
    scores = np.asarray(scores, dtype=np.float64)
    rejected, _ = benjamini_hochberg(pvalues, q)
    if rejected.all():
        threshold = conformal_threshold(reference_scores, q, "the references")
    else:
        threshold = float(scores[~rejected].max())
    return threshold, np.where(rejected, -1, 1)


class OnlineRanks:
    """Smoothed online conformal p-values of a stream of scores (Vovk's exchangeability test).

    The ``t``-th score's p-value is its randomised rank among the first
    ``t`` scores, ``(#{j <= t : s_j > s_t} + u_t #{j <= t : s_j = s_t}) / t``
    with ``u_t`` uniform on [0, 1]. When the stream is exchangeable (nothing
    changed), these p-values are independent and uniform on [0, 1] (Vovk,
    Gammerman and Shafer 2005, theorem 8.2), whatever the scores' law.
    """

    def __init__(self, rng):
        self._rng = rng
        self._sorted = np.empty(0)

    def update(self, score):
        lo = np.searchsorted(self._sorted, score, side="left")
        hi = np.searchsorted(self._sorted, score, side="right")
        self._sorted = np.insert(self._sorted, hi, score)
        t = len(self._sorted)
        above = t - (hi + 1)
        equal = hi - lo + 1
        return (above + self._rng.uniform() * equal) / t


class SimpleJumper:
    """Vovk's Simple Jumper test martingale over p-values (Vovk 2021, "Testing randomness online").

    Three bets ``f_e(p) = 1 + e (p - 1/2)``, ``e`` in {-1, 0, 1}, each of
    mean 1 under a uniform p, share the capital; before each step a share
    ``jump`` of the total is spread evenly over them, so the martingale can
    turn to a new direction of change quickly. Its value is a nonnegative
    martingale with initial value 1 while the p-values are independent and
    uniform, so by Ville's inequality it ever reaches ``1 / level`` with
    probability at most ``level``.
    """

    _BETS = np.array([-1.0, 0.0, 1.0])

    def __init__(self, jump):
        self.jump = jump
        self._capital = np.full(3, 1.0 / 3.0)

    @property
    def value(self):
        return float(self._capital.sum())

    def update(self, p):
        total = self._capital.sum()
        self._capital = (1.0 - self.jump) * self._capital + self.jump * total / 3.0
        self._capital = self._capital * (1.0 + self._BETS * (p - 0.5))
        return self.value
