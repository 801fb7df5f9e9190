"""Re-scoring with a Constrained Image-level Neighbourhood (RsCIN); docs/algorithm.rst, "RsCIN"."""

import numbers

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from ._batch import ImageScores
from ._novelty import NoveltyMixin, requires_novelty
from ._validation import (CONTAMINATION, Interval, Options, as_float64, check_finite_rows, check_int_list, input_tags,
                          int_sequence, validate_params)
from .thresholds import defect_masks, threshold_scores

__all__ = ["RsCINRescorer"]


def _unit_rows(E):
    E = np.asarray(E, dtype=np.float64)
    norms = np.linalg.norm(E, axis=1, keepdims=True)
    return E / np.where(norms > 0, norms, 1.0)


def _rscin_new(scores, embeddings, pool_scores, pool_embeddings, k_list):
    """RsCIN of new images against a fitted pool, on the scores as given.

    A new image's window is itself (weight 1, as the diagonal of the batch
    version) and its ``k - 1`` most similar pool images (cosines clipped at
    0), with the pool's fitted scores: what the image would get from the
    batch version in pool + {image} if its arrival did not change the
    pool's own scores.
    """
    W = np.clip(_unit_rows(embeddings) @ _unit_rows(pool_embeddings).T, 0.0, None)  # (m, N)
    order = np.argsort(-W, axis=1, kind="stable")
    out = np.zeros(len(scores))
    for k in k_list:
        keep = order[:, : min(k, len(pool_scores) + 1) - 1]
        w = np.take_along_axis(W, keep, axis=1)
        out += (scores + (w * pool_scores[keep]).sum(axis=1)) / (1.0 + w.sum(axis=1))
    return out / len(k_list)


def _rscin(scores, embeddings, k_list):
    """Mean over k of the top-k-neighbourhood weighted averages of the scores.

    The reference min-max scales the scores first. Every row of weights sums
    to 1, so each output is a weighted mean and scaling commutes with it:
    applied to the raw scores, the output is exactly ``min + (max - min)``
    times the scaled one, in the same order, but on the scale of the input,
    where a threshold means the same from one batch to the next (the
    min-max version stretches the noise of a clean batch to [0, 1]).
    """
    scores = np.asarray(scores, dtype=np.float64)
    E = _unit_rows(embeddings)
    W = E @ E.T
    n = len(scores)
    np.fill_diagonal(W, 1.0)  # cosine of an image with itself, also for a zero embedding
    # Negative similarities would enter the weights with a negative sign (and
    # can make a row sum vanish); an image unlike another gets no weight.
    W = np.clip(W, 0.0, None)
    # The image itself must be among its k nearest even when other images tie
    # with it (duplicates), so rank it first.
    ranking = W.copy()
    np.fill_diagonal(ranking, np.inf)
    order = np.argsort(-ranking, axis=1, kind="stable")
    rescored = np.zeros(n)
    for k in k_list:
        keep = order[:, :k]
        weights = np.take_along_axis(W, keep, axis=1)
        weights /= weights.sum(axis=1, keepdims=True)  # >= 1 thanks to the diagonal
        rescored += (weights * scores[keep]).sum(axis=1)
    return rescored / len(k_list)


class RsCINRescorer(NoveltyMixin, OutlierMixin, BaseEstimator):
    """Refine image anomaly scores with each image's nearest images.

    For each window ``k`` in ``k_list``, each image's score is replaced by
    the similarity-weighted mean of the scores of its ``k`` most similar
    images (itself included), the similarity being the cosine of image
    embeddings. The result is the mean over the windows. The weights of a
    mean sum to 1, so the output stays on the scale of the input scores: it
    equals ``min + (max - min)`` times the reference's output on min-max
    normalised scores (the reference code), in the same order, and a threshold
    carries over from one batch to another. Similar images get similar
    scores, which suppresses the isolated false alarms of a patch-level
    scorer.

    RsCIN needs only image scores and embeddings, so it works behind any
    scorer: MuSc's :class:`MutualScoringDetector`, anomalib's PatchCore
    (:class:`~sklearn_musc.interop.PatchCoreCapture` records its scores and
    salient features), PyOD's detectors (``fit(X,
    scores=clf.decision_scores_)``), an IsolationForest, ... (README, "RsCIN
    behind your own scorer", where it helps and where it does not). It is
    transductive: it rescores the batch it is fitted on.

    Parameters
    ----------
    k_list : sequence of int, default=(1, 7)
        Neighbourhood sizes. The default is MuSc-V2's; the MuSc paper's code
        uses (1, 2, 3) for MVTec AD and (1, 8, 9) for VisA (the ``paper-*``
        presets of :func:`~sklearn_musc.presets.make_musc_pipeline`). ``k = 1`` keeps
        each image alone (its own score). A ``k`` larger than the batch is
        clipped to the batch size (all images).
    embedding : {"auto", "salient", "image"}, default="auto"
        Which embedding of an :class:`ImageScores` input to use: "salient"
        (MuSc-V2's feature of each image's most anomalous patch), "image"
        (the backbone's image embedding, the MuSc paper's), or "auto" (the
        salient feature when there is one, else the image embedding).
        Ignored when ``X`` is an array. "auto" because, on MVTec AD, RsCIN
        with the class token lowered the mean image AUROC and with the
        salient feature raised it (``benchmarks/RESULTS.md``, "Beyond the
        paper").
    contamination : "auto" or float in (0, 0.5], default="auto"
        How rescored values become labels when ``threshold`` is None; see
        :class:`MutualScoringDetector`. "auto" runs the label-free rule on
        the rescored values themselves; the threshold an :class:`ImageScores`
        input carries (the detector's) is not applied: RsCIN pulls a
        defective image towards its normal neighbours, so the detector's
        threshold misses defects that the rule on the rescored values keeps
        (``benchmarks/RESULTS.md``, "Docstrings' numbers"). Pass
        ``threshold=`` to apply it.
    threshold : float or None, default=None
        A fixed threshold on the rescored values (e.g. ``threshold_`` of
        another batch); None uses ``contamination``.
    novelty : bool, default=False
        Keep the fitted batch's scores and embeddings to re-score new images
        (:meth:`score_samples`, :meth:`decision_function`, :meth:`predict`),
        behind a ``MutualScoringDetector(novelty=True)``. A new image's
        window is itself and its ``k - 1`` most similar fitted images, with
        their fitted (input) scores; its own score enters with weight 1.
        The result is on the scale of the input scores, as the fitted
        batch's, so the fitted ``threshold_`` applies. The fitted images'
        values do not change.

    Attributes
    ----------
    anomaly_scores_ : ndarray of shape (n_images,)
        Rescored values, between the minimum and the maximum of the input
        scores; higher is more anomalous.
    threshold_ : float
        Images scoring strictly above it are labelled -1.
    labels_ : ndarray of shape (n_images,)
        1 for normal, -1 for anomalous.
    anomaly_masks_ : ndarray of shape (n_images, H, W), bool
        Only when ``X`` carries anomaly maps (the ``ImageScores`` of
        :class:`MutualScoringDetector`): the defect mask of each image
        labelled -1 here, by the detector's rule (docs/algorithm.rst, "Labels
        and masks": the pixels above half-way from the image's median map
        value to its peak); empty for images labelled 1, so the pipeline's
        final labels and masks agree (masks that follow the detector's
        labels instead were the worse: ``benchmarks/RESULTS.md``,
        "Docstrings' numbers").
    k_list_ : tuple of int
        The windows used, after clipping to the batch size.
    embedding_ : str
        The embedding used: "image", "salient" or "array".
    pool_scores_, pool_embeddings_ : ndarray
        With ``novelty=True``: the fitted images' input scores and
        embeddings, which re-score new images.
    offset_ : float
        With ``novelty=True``: ``-threshold_`` (``decision_function =
        score_samples - offset_``, negative for anomalous images).
    pvalues_ : ndarray of shape (n_images,)
        Only when ``X`` carries conformal p-values (a detector fitted with
        references): the detector's, unchanged (see :meth:`pvalues`).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_musc import RsCINRescorer
    >>> rng = np.random.default_rng(0)
    >>> embeddings = rng.normal(size=(6, 16))
    >>> scores = np.array([0.1, 0.2, 0.15, 0.9, 0.12, 0.18])
    >>> rs = RsCINRescorer(k_list=(1, 2), contamination=0.2).fit(embeddings, scores=scores)
    >>> rs.anomaly_scores_.round(2)
    array([0.11, 0.19, 0.16, 0.86, 0.12, 0.17])
    >>> rs.labels_
    array([ 1,  1,  1, -1,  1,  1])
    """

    _parameter_constraints = {
        "k_list": [int_sequence(minimum=1)],
        "embedding": [Options("auto", "salient", "image")],
        "contamination": CONTAMINATION,
        "threshold": [None, Interval(numbers.Real, None, None)],
        "novelty": ["boolean"],
    }

    def __init__(self, *, k_list=(1, 7), embedding="auto", contamination="auto", threshold=None,
                 novelty=False):
        self.k_list = k_list
        self.embedding = embedding
        self.contamination = contamination
        self.threshold = threshold
        self.novelty = novelty

    def __sklearn_tags__(self):
        # embeddings are a 2-D table, but fit needs scores too (or ImageScores)
        return input_tags(super().__sklearn_tags__(), two_d_array=True)

    def _embeddings(self, X):
        if self.embedding in ("auto", "salient") and X.salient_features is not None:
            return X.salient_features, "salient"
        if self.embedding in ("auto", "image") and X.embeddings is not None:
            return X.embeddings, "image"
        raise ValueError(
            f"embedding={self.embedding!r}, but the input carries no such embedding; "
            "pass embeddings and scores as arrays: fit(embeddings, scores=...)"
        )

    def fit(self, X, y=None, scores=None):
        """Rescore the batch.

        Parameters
        ----------
        X : ImageScores or array-like of shape (n_images, embed_dim)
            The output of a detector's ``fit_transform`` (scores and
            embeddings), or image embeddings from any backbone: a numpy
            array or a torch tensor (any device, dtype, with or without
            grad), e.g. :func:`~sklearn_musc.interop.salient_features`.
        y : None
            Ignored.
        scores : array-like of shape (n_images,), default=None
            Image anomaly scores (higher = more anomalous) of any scorer;
            required when ``X`` is an array, taken from ``X`` otherwise:
            anomalib's ``pred_score``, PyOD's ``decision_scores_`` as they
            are, scikit-learn's ``score_samples`` negated. Numpy or torch.
            Scores and embeddings of different lengths, or holding NaN, are
            refused with the count and the first image.

        Returns
        -------
        self : object
        """
        validate_params(self)
        k_list = check_int_list(self.k_list, "k_list")  # as a tuple of ints
        # the rule runs on the rescored values themselves: a threshold carried
        # from the detector does not hold once RsCIN has pulled a defective
        # image towards its normal neighbours (benchmarks/RESULTS.md)
        threshold = None if self.threshold is None else float(self.threshold)
        scores, embeddings, self.embedding_ = self._inputs(X, scores)
        self.k_list_ = tuple(min(k, len(scores)) for k in k_list)
        self.anomaly_scores_ = _rscin(scores, embeddings, self.k_list_)
        self.threshold_, self.labels_ = threshold_scores(self.anomaly_scores_, self.contamination, threshold)
        maps = X.anomaly_maps if isinstance(X, ImageScores) else None
        if maps is not None:
            self.anomaly_masks_ = defect_masks(maps, self.labels_)
        else:
            self.__dict__.pop("anomaly_masks_", None)
        self.__dict__.pop("pvalues_", None)
        if isinstance(X, ImageScores) and X.pvalues is not None:
            self.pvalues_ = X.pvalues
        if self.novelty:
            self.pool_scores_, self.pool_embeddings_ = scores, embeddings
            self.offset_ = -self.threshold_
        return self

    def _inputs(self, X, scores):
        """``(scores, embeddings, embedding kind)`` of an ImageScores or arrays, checked."""
        if isinstance(X, ImageScores):
            if scores is not None:
                raise ValueError("scores are taken from the ImageScores input; do not pass them too")
            scores = X.scores
            embeddings, kind = self._embeddings(X)
        else:
            if scores is None:
                raise ValueError("scores are required when X is an array of embeddings: fit(X, scores=...)")
            embeddings, kind = X, "array"
        embeddings, scores = as_float64(embeddings, "embeddings"), as_float64(scores, "scores")
        if scores.ndim != 1:
            raise ValueError(f"scores must hold one value per image, shape (n_images,), got shape {scores.shape}")
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must have shape (n_images, embed_dim), got shape {embeddings.shape}")
        if len(embeddings) != len(scores):
            raise ValueError(f"scores and embeddings disagree in length: {len(scores)} scores, "
                             f"{len(embeddings)} embeddings")
        if len(scores) == 0:
            raise ValueError("RsCIN needs at least one image")
        check_finite_rows(scores, "scores")
        check_finite_rows(embeddings, "embeddings")
        return scores, embeddings, kind

    _batch_alternative = (
        "RsCINRescorer re-scores the batch it is fitted on; to re-score new images "
        "(Pipeline.predict / score_samples after fit), use RsCINRescorer(novelty=True) "
        "behind MutualScoringDetector(novelty=True), or end the pipeline with the detector"
    )

    def _anomaly_scores_new(self, X, scores=None):
        """Re-scored anomaly scores of new images (the novelty mixin's ``score_samples``).

        ``X`` is an ImageScores (a novelty detector's ``transform``), or
        embeddings with ``scores``; the same kind of embedding as in ``fit``.
        """
        check_is_fitted(self, "offset_")
        pool_scores, pool_embeddings = self.pool_scores_, self.pool_embeddings_
        new_scores, embeddings, kind = self._inputs(X, scores)
        if kind != self.embedding_ or embeddings.shape[1] != pool_embeddings.shape[1]:
            raise ValueError(
                f"the new images carry {kind} embeddings of width {embeddings.shape[1]}; this re-scorer "
                f"was fitted on {self.embedding_} embeddings of width {pool_embeddings.shape[1]}"
            )
        return _rscin_new(new_scores, embeddings, pool_scores, pool_embeddings, self.k_list_)

    @available_if(requires_novelty("pvalues"))
    def pvalues(self, X):
        """The detector's conformal p-values of new images, passed on unchanged.

        RsCIN re-scores an image with its neighbours' scores, so a re-scored
        value is no longer exchangeable with a calibration score made
        without them, and no p-value is computed from it. The p-values here
        are the detector's (``MutualScoringDetector.pvalues``), with the
        detector's guarantee; this re-scorer's labels (:meth:`predict`) are
        not calibrated. For labels at a chosen false-alarm rate, use the
        detector's (``alpha``), or ``pvalues(X) <= alpha``.

        Parameters
        ----------
        X : ImageScores
            New images scored by ``MutualScoringDetector(novelty=True)``'s
            ``transform``.

        Returns
        -------
        pvalues : ndarray of shape (n_images,)
        """
        if not isinstance(X, ImageScores) or X.pvalues is None:
            raise ValueError("pvalues needs an ImageScores with p-values, as "
                             "MutualScoringDetector(novelty=True).transform returns from a calibrated pool")
        return X.pvalues

    @available_if(requires_novelty("predict_masks"))
    def predict_masks(self, X):
        """Defect masks of new images that agree with :meth:`predict`.

        Parameters
        ----------
        X : ImageScores
            New images scored by ``MutualScoringDetector(novelty=True)``'s
            ``transform`` (scores, embeddings and anomaly maps).

        Returns
        -------
        masks : ndarray of shape (n_images, H, W), bool
            As ``anomaly_masks_``: the images :meth:`predict` labels -1 get
            their defect masks, the others empty masks.
        """
        if not isinstance(X, ImageScores) or X.anomaly_maps is None:
            raise ValueError("predict_masks needs an ImageScores with anomaly maps, as "
                             "MutualScoringDetector(novelty=True).transform returns")
        return defect_masks(X.anomaly_maps, self.predict(X))

    def fit_predict(self, X, y=None, scores=None):
        """Rescore the batch and return its labels (1 normal, -1 anomalous).

        Parameters
        ----------
        X : ImageScores or array-like of shape (n_images, embed_dim)
            See :meth:`fit`.
        y : None
            Ignored.
        scores : array-like of shape (n_images,), default=None
            See :meth:`fit`.

        Returns
        -------
        labels : ndarray of shape (n_images,)
        """
        return self.fit(X, scores=scores).labels_
