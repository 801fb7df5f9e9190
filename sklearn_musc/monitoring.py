"""A drift alarm for a stream of parts: a conformal test martingale over their anomaly scores."""

import numbers

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .conformal import OnlineRanks, SimpleJumper
from ._validation import Interval, validate_params

__all__ = ["DriftMonitor"]


class DriftMonitor(BaseEstimator):
    """Alarm when a line's parts stop being exchangeable: lighting, soiling, a new supplier.

    A pool describes the parts it was fitted on; when the line changes, the
    new parts' scores drift and the pool's p-values and thresholds stop
    meaning what they say. This monitor reads the stream of scores (any
    score: a detector's ``anomaly_scores_`` of new parts, in the order they
    were made) and tests that the stream stays exchangeable. Each score gets
    a smoothed online conformal p-value (its randomised rank among the
    scores seen so far), which is uniform and independent of the earlier
    ones while nothing changes; Vovk's Simple Jumper martingale bets on
    those p-values being too small (scores drifting up) or too large
    (drifting down). While nothing changes, the martingale reaches
    ``1 / level`` with probability at most ``level`` over the whole stream,
    however long (Ville's inequality): that is the alarm's false-alarm rate.

    Parameters
    ----------
    level : float in (0, 1), default=0.01
        The probability of a false alarm over the whole stream when nothing
        changes; the alarm rings when the martingale reaches ``1 / level``.
    jump : float in (0, 1), default=0.01
        Share of the capital redistributed over the three bets at each part
        (faster reaction to a change against slower growth). The default is
        Vovk's.
    random_state : int, RandomState instance or None, default=None
        Draws the uniform tie-breakers of the p-values.

    Attributes
    ----------
    pvalues_ : ndarray of shape (n_seen,)
        The online p-values of the scores seen so far.
    martingale_ : ndarray of shape (n_seen,)
        The martingale after each score.
    alarm_ : bool
        Whether the martingale has reached ``1 / level``.
    alarm_index_ : int or None
        Index (0-based, in the stream) of the part at which it first did.
    n_seen_ : int
        Scores seen.

    Notes
    -----
    The p-values rank each part among the *stream's* earlier parts, not the
    pool's calibration scores, so the guarantee needs no assumption about
    the pool; the alarm detects a change during the stream, not a pool that
    was wrong from the start (the conformal p-values of the parts against
    the pool show that: README "Decisions you can trust"). Detection delays
    on simulated changes are in ``benchmarks/RESULTS.md``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_musc import DriftMonitor
    >>> rng = np.random.default_rng(0)
    >>> stream = np.r_[rng.normal(size=300), rng.normal(loc=2.0, size=100)]  # the line changes at 300
    >>> monitor = DriftMonitor(random_state=0).partial_fit(stream)
    >>> monitor.alarm_, monitor.alarm_index_ > 300
    (True, True)
    """

    _parameter_constraints = {
        "level": [Interval(numbers.Real, 0, 1, closed="neither")],
        "jump": [Interval(numbers.Real, 0, 1, closed="neither")],
        "random_state": [None, "random_state"],
    }

    def __init__(self, *, level=0.01, jump=0.01, random_state=None):
        self.level = level
        self.jump = jump
        self.random_state = random_state

    def fit(self, scores, y=None):
        """Start a new stream and read ``scores``.

        Parameters
        ----------
        scores : array-like of shape (n_parts,)
            Anomaly scores in the order the parts were made.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        for name in ("_ranks", "_jumper", "pvalues_", "martingale_", "alarm_", "alarm_index_", "n_seen_"):
            self.__dict__.pop(name, None)
        return self.partial_fit(scores)

    def partial_fit(self, scores, y=None):
        """Read more parts of the stream (the first call starts it).

        Parameters
        ----------
        scores : array-like of shape (n_parts,)
            Anomaly scores in the order the parts were made; a scalar is one part.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        scores = np.atleast_1d(np.asarray(scores, dtype=np.float64))
        if scores.ndim != 1:
            raise ValueError(f"scores must be 1-D (one score per part), got shape {scores.shape}")
        if not np.isfinite(scores).all():
            raise ValueError("scores contain NaN or infinity; the drift alarm cannot rank them")
        if "_jumper" not in self.__dict__:
            validate_params(self)
            self._ranks = OnlineRanks(check_random_state(self.random_state))
            self._jumper = SimpleJumper(float(self.jump))
            self.pvalues_, self.martingale_ = np.empty(0), np.empty(0)
            self.alarm_, self.alarm_index_, self.n_seen_ = False, None, 0
        p = np.array([self._ranks.update(s) for s in scores])
        m = np.array([self._jumper.update(v) for v in p])
        if not self.alarm_:
            hits = np.nonzero(m >= 1.0 / self.level)[0]
            if len(hits):
                self.alarm_, self.alarm_index_ = True, self.n_seen_ + int(hits[0])
        self.pvalues_ = np.r_[self.pvalues_, p]
        self.martingale_ = np.r_[self.martingale_, m]
        self.n_seen_ += len(scores)
        return self

    def summary(self):
        """A dict for reports: parts seen, the alarm, where it rang, the martingale's last and largest value."""
        check_is_fitted(self, "n_seen_")
        return {
            "parts_seen": int(self.n_seen_),
            "level": float(self.level),
            "alarm": bool(self.alarm_),
            "alarm_index": self.alarm_index_,
            "martingale_last": float(self.martingale_[-1]) if self.n_seen_ else 1.0,
            "martingale_max": float(self.martingale_.max()) if self.n_seen_ else 1.0,
        }
