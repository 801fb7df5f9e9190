"""The novelty API shared by the detector and the re-scorer (``novelty=True``), as in ``LocalOutlierFactor``.

:class:`NoveltyMixin` writes ``score_samples``, ``decision_function`` and
``predict`` of new images once. An estimator that uses it

* has a ``novelty`` parameter and, when fitted with it, ``offset_`` (the
  ``score_samples`` value below which an image is anomalous; absent when
  nothing sets a threshold);
* implements ``_anomaly_scores_new(X, **params)``: the anomaly scores of new
  images (higher = more abnormal);
* names what to use without novelty in ``_batch_alternative`` (the message of
  the ``AttributeError`` each method raises), and may say in
  ``_no_offset_message`` why ``offset_`` can be missing.

Each method has its own ``available_if`` guard, so a method added here (such
as conformal p-values) gets one more line: ``@available_if(requires_novelty("name"))``.
"""

import numpy as np
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

__all__ = ["NoveltyMixin", "requires_novelty"]


def requires_novelty(method):
    """The ``available_if`` check of one method: only with ``novelty=True``, else an error naming the alternative."""

    def check(self):
        if not self.novelty:
            raise AttributeError(
                f"{type(self).__name__}.{method} scores new images: it is available with "
                f"{type(self).__name__}(novelty=True); {self._batch_alternative}"
            )
        return True

    return check


class NoveltyMixin:
    """``score_samples``, ``decision_function`` and ``predict`` of new images (``novelty=True`` only)."""

    _batch_alternative = "without it, use fit_predict on the whole batch"
    _no_offset_message = "this estimator was fitted without a threshold"

    @available_if(requires_novelty("score_samples"))
    def score_samples(self, X, **params):
        """Opposite of the anomaly score of new images; lower is more abnormal.

        Each new image is scored against what ``fit`` kept (the pool), never
        by the other new images.

        Parameters
        ----------
        X : FeatureSets, ImageScores or array-like
            New images, made like the ones ``fit`` was given.
        **params : dict
            Passed on to the estimator's scoring (``RsCINRescorer``:
            ``scores`` when ``X`` is an array of embeddings).

        Returns
        -------
        scores : ndarray of shape (n_images,)
            ``-anomaly score``.
        """
        check_is_fitted(self)
        return -self._anomaly_scores_new(X, **params)

    @available_if(requires_novelty("decision_function"))
    def decision_function(self, X, **params):
        """``score_samples(X) - offset_``: negative for anomalous new images.

        Parameters
        ----------
        X : FeatureSets, ImageScores or array-like
            See :meth:`score_samples`.
        **params : dict
            See :meth:`score_samples`.

        Returns
        -------
        decision : ndarray of shape (n_images,)
        """
        check_is_fitted(self)
        if "offset_" not in self.__dict__:
            raise ValueError(self._no_offset_message)
        return self.score_samples(X, **params) - self.offset_

    @available_if(requires_novelty("predict"))
    def predict(self, X, **params):
        """Labels of new images: 1 normal, -1 anomalous (``decision_function < 0``).

        Parameters
        ----------
        X : FeatureSets, ImageScores or array-like
            See :meth:`score_samples`.
        **params : dict
            See :meth:`score_samples`.

        Returns
        -------
        labels : ndarray of shape (n_images,)
        """
        return np.where(self.decision_function(X, **params) < 0, -1, 1)
