"""Mutual Scoring Mechanism (MSM): the images of a batch score each other (docs/algorithm.rst)."""

import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F
from joblib import Parallel, delayed, effective_n_jobs
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from . import _foreground, _msm, _msm_batch, _msm_fused
from ._batch import FeatureSets, ImageScores, salient_features
from .conformal import conformal_pvalues, conformal_threshold, fdr_decision
from ._device import resolve_device
from ._novelty import NoveltyMixin, requires_novelty
from ._progress import progress_bar
from .thresholds import defect_masks, labels_above, threshold_scores
from ._validation import (CONTAMINATION, DEVICE, Interval, Options, as_feature_sets, input_tags,
                          validate_params)

__all__ = ["MutualScoringDetector"]

class MutualScoringDetector(NoveltyMixin, OutlierMixin, BaseEstimator):
    """Zero-shot anomaly detection by mutual scoring of an unlabeled batch.

    Every patch of every image is scored by the other images of the batch: for
    each other image, the distance to its nearest patch; the distances of the
    ``N - 1`` other images are sorted and those ranked in
    ``[floor((N-1) topmin_min), floor((N-1) topmin_max))`` averaged. Normal
    patches find close matches in many images, defective ones in few. The
    patch score is the mean of that interval average over the feature sets of
    :class:`LNAMDTransformer`; the anomaly map is the patch-score grid
    upsampled (bilinear, ``align_corners=True``) to the model input size, and
    the image score is the map's maximum.

    By default the detector is transductive, like
    :class:`~sklearn.neighbors.LocalOutlierFactor` with ``novelty=False``: it
    scores the batch it is fitted on. Use :meth:`fit_predict`, or
    :meth:`fit_transform` to hand the image scores to :class:`RsCINRescorer`;
    its ``transform`` then refuses every input (see :meth:`transform`).
    With ``novelty=True`` it also keeps the fitted batch as a pool of scorers
    and scores new images against it (:meth:`score_samples`,
    :meth:`decision_function`, :meth:`predict`, :meth:`transform`): a new
    image gets the score it would get in the batch pool + {image}, without
    the cost of refitting and whatever else is new.

    Features made with turned copies (``ViTPatchTransformer(turns=...)``,
    carried in ``FeatureSets.turned``) are used as they come: each scorer
    image counts with its own patches and those of its copies, so a patch's
    distance to another image is the smallest to that image or to any of
    its copies, never to the patch's own image or its copies; the interval
    still runs over the ``N - 1`` other images. Parts that lie at any angle
    then find their normal patches in the other parts whichever way they
    lie. Each copy costs about twice the products of the batch itself (a
    product of two images serves both of them; one with a copy does not).
    New images scored against a pool (novelty) are scored by the pool's
    images and their copies; their own copies are not used. Not with
    ``radius`` or ``foreground``.

    Parameters
    ----------
    topmin_min, topmin_max : float, default=0.0, 0.2
        Bounds of the rank interval, as fractions of the ``N - 1`` other
        images, ``0 <= topmin_min < topmin_max <= 1``. At least one image is
        always used (``k_max >= 1``), so batches of 2 to 4 images score.
        The MuSc paper uses 0.3 (the ``paper-*`` presets of
        :func:`~sklearn_musc.presets.make_musc_pipeline`). 0.2 is chosen by the
        study in ``benchmarks/RESULTS.md`` ("Beyond the paper"): a narrower
        interval scores a patch against the images most like it, which helps
        products with wide normal variation (capsule, pill, screw), but a
        defect repeated in more than ``topmin_max`` of the batch vouches for
        itself; 0.2 is the narrowest that still ranks a defect repeated in a
        tenth of a batch first.
    novelty : bool, default=False
        Keep the fitted batch (its feature sets) as the pool that scores new
        images. ``fit`` still scores the batch itself, as without novelty;
        ``score_samples``, ``decision_function``, ``predict`` and a
        ``transform`` of new images exist only when True.
    reduction : {"interval", "min"}, default="interval"
        How the ``N - 1`` per-image distances of a patch become its score:
        "interval", the interval average above; "min", the distance to the
        nearest scorer image. With ``novelty=True`` and a pool of known-normal
        references, "min" is the paper's MuSc+ (appendix A.6).
    radius : int or None, default=None
        None compares each patch with every patch of the other images. An int
        compares it only with the patches within ``radius`` rows and columns
        of the same grid position (0: the same position only), for aligned
        parts (boards, labels, fixtures) where a defect is a difference from
        what the other parts have *at that place*. It costs about
        ``(2 radius + 1)**2 / L`` of global matching.
    repeat_ratio : float in (0, 1) or None, default=None
        Protection against a defect repeated in several images of the batch,
        which then vouch for each other (off by default). In each feature
        set, two images are taken for twins when each one's most anomalous
        patch has its best match in the other closer than ``repeat_ratio``
        times the median over all its scorers; an image with twins (fewer
        than half of its scorers) is scored by the others only.
        References are never dropped; new images scored against a pool
        (novelty) are not filtered. It reuses the table of best matches, so
        the products cost nothing more. Off by default: it protects against
        defects repeated in a larger share of the batch than plain scoring
        does, but plain scoring was the better on MVTec AD's tuning
        categories, whose defects of one type differ from image to image,
        and new images are not filtered (the measurements:
        ``benchmarks/RESULTS.md``, "Beyond the paper").
    contamination : "auto" or float in (0, 0.5], default="auto"
        How image scores become labels when ``threshold`` is None. A float
        flags that share of the batch (the ``1 - contamination`` quantile is
        the threshold). "auto" needs no labels: when a two-component Gaussian
        mixture of the image scores clearly beats one Gaussian and one Gumbel
        (BIC), the lower component's share is taken as normal and the rest
        is flagged; otherwise the threshold is ``median + n_sigma * s_up``,
        with ``s_up`` the robust spread of the scores above the median (a
        clean or production-like batch, where normal images are the
        majority): :func:`~sklearn_musc.thresholds.auto_threshold`. See
        README "Labels".
    threshold : float >= 0 or None, default=None
        A fixed threshold on the image scores (e.g. ``threshold_`` of
        another batch of the same product); None uses ``alpha``, ``fdr``
        or ``contamination``.
    alpha : float in (0, 1) or None, default=None
        With ``novelty=True``: the false-alarm rate for new images. The
        threshold becomes the conformal one calibrated on the pool
        (:meth:`pvalues`): a new good part is labelled -1 with probability
        at most ``alpha``, in finite samples, when it is exchangeable with
        the pool's parts (fit the pool on parts known or accepted to be
        good). It replaces ``contamination``'s threshold (the fitted batch
        is labelled with it too); it cannot be combined with ``threshold``.
        A pool of ``N`` images can give p-values no smaller than ``1 / (N +
        1)``: ``N + 1 < 1 / alpha`` is an error at fit, never a threshold
        that flags nothing.
    fdr : float in (0, 1) or None, default=None
        With ``references``: label the batch by Benjamini-Hochberg at this
        false-discovery level on its p-values against the references
        (``pvalues_``), so that among the images labelled -1 the expected
        share of good ones is at most ``fdr``, when the batch's good images
        and the references are exchangeable. Needs one subset and no
        ``repeat_ratio``; cannot be combined with ``threshold``.
    max_pool_size : int >= 2 or None, default=None
        With ``novelty=True``: the most images the pool keeps when
        :meth:`partial_fit` adds parts; beyond it the oldest are dropped.
        Below it, additions are incremental (new against pool products
        only); dropping images, or growing a pool fitted without this bound,
        rescores the kept pool against itself. None: no bound.
    n_subsets : int, default=1
        Score the batch as this many random, disjoint subsets of nearly equal
        size, each on its own (the reference's ``divide_num``): the cost falls
        from ``N^2`` to ``N^2 / n_subsets``, each subset needs 2 images or more.
    max_subset_size : int or None, default=None
        When set, use as many subsets as needed so that none is larger.
    random_state : int, RandomState instance or None, default=None
        Seeds the split into subsets.
    n_jobs : int or None, default=None
        Subsets scored in parallel with joblib; ``None`` means 1 unless in a
        :func:`joblib.parallel_config` context, whose backend (threading, loky,
        Dask, Ray) is used.
    device : str, default="auto"
        "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:<i>".
    memory_budget : int or None, default=None
        Bytes the scoring of one subset may use on the device (host RAM for
        the CPU); ``None`` means half of the free device memory (of the
        available RAM, page cache counted as free, within a container's
        cgroup limit). For ``n`` images of ``L`` patches of width ``C``, with
        ``k = floor((n-1) topmin_max)``, one feature set at a time takes
        ``4 * (n*n*L + 3*n*k*L)`` bytes for the table of per-image best
        matches and its top ``k``, plus the features (``4*n*L*C``; streamed
        from the host in tiles when they do not fit) and one product tile of
        at most 32 MiB (CPU) or 2 GiB (CUDA); turned copies add their
        features (``4*n_turns*n*L*C``), not tables. A batch whose table does not fit
        is refused with a ``MemoryError`` that proposes a subset size. With
        ``n_jobs > 1``, each concurrently scored subset has this budget.
    matmul_precision : {"float32", "tf32", "bfloat16"}, default="float32"
        Rounding of the inputs of the matrix products. "float32" is exact (to float32
        rounding). On CUDA, "tf32" (10-bit mantissa) and "bfloat16" (8-bit
        mantissa) inputs run on tensor cores several times faster; sums,
        maxima and distances stay float32; "bfloat16" needs torch >= 2.8.
        Their effect is measured in ``benchmarks/RESULTS.md``.
    algorithm : {"matmul", "fused"}, default="matmul"
        How the best matches are computed. "matmul": torch matrix products
        of tiles of images, whose row and column maxima are taken afterwards
        (any device). "fused": a Triton kernel (CUDA only; Triton comes with
        CUDA builds of torch) that takes the maxima of each block of
        products where it is computed, so no product tile is written to GPU
        memory; made for "tf32" and "bfloat16". Both give the same scores
        (to float32 rounding). "fused" has been checked with Triton's
        interpreter and compiled for sm_80/sm_90, but not yet timed on a
        GPU, hence not the default (see ``benchmarks/RESULTS.md``). Scoring
        new images against a pool (novelty), same-position matching
        (``radius``) and references always use "matmul" products.
    progress : bool, default=True
        Show a progress bar with the time left over the image pairs compared
        (``fit``: every pair of the batch and of each image with the
        references, times the feature sets; ``transform`` and the other
        novelty methods: every new image against every pool image), once
        the scoring has run for a second. With ``n_jobs > 1`` it advances
        by whole subsets. The pool's calibration, the references' scores and
        ``partial_fit`` have bars of their own.
    foreground : {None, "auto", "always"}, default=None
        Zero-shot foreground masks, so that the background of parts lying
        on a surface neither scores as anomalous nor vouches for a defect.
        The mask comes from the batch's own features: the first principal
        component of all patches of the last feature set, split at its
        mean; the side holding most of the image border is the background.
        Each image keeps its own foreground plus the patches that are
        foreground in at least half of the batch (a missing part stays
        scored), grown by one patch. Background patches are zeroed before
        scoring (a scorer's background then matches at the distance of an
        orthogonal feature, ``sqrt(2)``) and their scores set to the lowest
        foreground score of their image. "always" masks every batch;
        "auto" only a batch of parts on a background, decided without
        labels: the component must vary mostly inside images (at least half
        of its variance; textures split whole images instead) and the
        background must hold at least three quarters of the border
        (``foreground_stats_``). Not with ``novelty=True`` or
        ``references``. Measured in ``benchmarks/RESULTS.md`` ("Accuracy
        where MuSc is weakest").

    Attributes
    ----------
    foreground_masks_ : ndarray of shape (n_images, grid_h, grid_w), bool, or None
        With ``foreground``: each image's foreground patches (computed even
        when "auto" decides not to apply them); else None.
    foreground_applied_ : bool
        Whether the masks were applied.
    foreground_stats_ : dict or None
        With ``foreground``: ``within_share`` (share of the component's
        variance inside images) and ``border_foreground`` (share of border
        patches on the foreground side), the statistics of the "auto" rule.
    patch_scores_ : ndarray of shape (n_images, grid_h, grid_w)
        Patch scores, mean over the feature sets.
    set_patch_scores_ : ndarray of shape (n_images, n_sets, grid_h, grid_w)
        Patch scores of each feature set.
    anomaly_maps_ : ndarray of shape (n_images, H, W)
        Patch scores upsampled to the model input size when the input carries
        it (output of ``ViTPatchTransformer``), else equal to ``patch_scores_``.
    anomaly_scores_ : ndarray of shape (n_images,)
        Image scores (maximum of the anomaly map); higher is more anomalous.
    threshold_ : float
        Images scoring strictly above it are labelled -1.
    labels_ : ndarray of shape (n_images,)
        1 for normal, -1 for anomalous (PyOD's ``labels_`` use 0 and 1).
    anomaly_masks_ : ndarray of shape (n_images, H, W), bool
        Binary defect masks at the size of ``anomaly_maps_``: the pixels of
        an image labelled -1 above ``(background + peak) / 2``, where the
        background is the image's median map value (the defect's "half
        height"); empty for the images labelled 1. ``masks_to_original(anomaly_masks_,
        original_sizes_, input_size_, crop_mode=crop_mode_)`` gives them at
        each image's size.
    input_size_ : (int, int) or None
        Model input size of the batch (from ``ViTPatchTransformer``).
    original_sizes_ : tuple of (int, int) or None
        Each image's original size; ``maps_to_original(anomaly_maps_,
        original_sizes_, input_size_, crop_mode=crop_mode_)`` gives the maps
        at that resolution.
    crop_mode_ : str or None
        How the images were fitted to the model input
        (``ViTPatchTransformer(crop_mode=...)``).
    subsets_ : list of ndarray
        Indices of the images of each subset.
    turns_ : tuple of str
        The turned copies of the scorer images that were used (the names in
        ``FeatureSets.turns``); empty without copies.
    device_ : torch.device
        The device used.
    pool_ : FeatureSets
        With ``novelty=True``: the feature sets that score new images (the
        fitted batch, and the references when ``fit`` was given some). Its
        ``features`` are the only state novelty scoring needs:
        ``N * n_sets * grid_h * grid_w * dim`` values in their stored dtype
        (float32 ones normalised to unit length at fit; float16 ones kept
        as given, with one float32 inverse norm per patch). With turned
        copies, ``pool_.turned`` holds theirs, kept the same way.
    offset_ : float
        With ``novelty=True``: ``-threshold_``, so that
        ``decision_function = score_samples - offset_`` is negative for the
        images labelled anomalous.
    calibration_scores_ : ndarray of shape (n_pool,)
        With ``novelty=True`` (pools of 2 images or more): each pool image's
        score in the batch pool + {a new image}, with the new image taken
        infinitely far from it, an upper bound of its exact score there
        (README "Decisions you can trust"); the conformal p-values of new
        images rank them among these.
    pvalues_ : ndarray of shape (n_images,)
        With ``references`` (one subset, no ``repeat_ratio``): each batch
        image's conformal p-value against the references' scores
        (``reference_scores_``).
    reference_scores_ : ndarray of shape (n_refs,)
        With ``references``: each reference scored by the batch and the other
        references, with the batch's interval bounds.

    See Also
    --------
    LNAMDTransformer : makes the feature sets this detector scores.
    RsCINRescorer : refines the image scores with image-level neighbours.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.pipeline import Pipeline
    >>> from sklearn_musc import LNAMDTransformer, MutualScoringDetector
    >>> rng = np.random.default_rng(0)
    >>> tokens = rng.normal(size=(8, 2, 6, 6, 32)) + rng.normal(size=(1, 2, 6, 6, 32)) * 3
    >>> tokens[5, :, 2:4, 2:4] += 4 * rng.normal(size=32)  # a defect in image 5
    >>> det = MutualScoringDetector(device="cpu")
    >>> labels = Pipeline([("lnamd", LNAMDTransformer(device="cpu")), ("msm", det)]).fit_predict(tokens)
    >>> int(det.anomaly_scores_.argmax()), int(labels[5])
    (5, -1)

    A pool of parts scores new parts (novelty mode):

    >>> lnamd = LNAMDTransformer(device="cpu").fit(tokens)
    >>> pool = MutualScoringDetector(novelty=True, device="cpu").fit(lnamd.transform(tokens[:5]))
    >>> pool.predict(lnamd.transform(tokens[5:]))  # image 5 has the defect
    array([-1,  1,  1])

    Labels at a false-alarm rate, calibrated on a pool of good parts
    (conformal p-values; 5 parts can reach ``alpha=0.2``, 19 ``alpha=0.05``):

    >>> cal = MutualScoringDetector(novelty=True, alpha=0.2, device="cpu").fit(lnamd.transform(tokens[:5]))
    >>> cal.pvalues(lnamd.transform(tokens[5:])).round(2)
    array([0.17, 1.  , 0.67])
    >>> cal.predict(lnamd.transform(tokens[5:]))
    array([-1,  1,  1])
    """

    def __init__(
        self,
        *,
        topmin_min=0.0,
        topmin_max=0.2,
        novelty=False,
        reduction="interval",
        radius=None,
        repeat_ratio=None,
        contamination="auto",
        threshold=None,
        alpha=None,
        fdr=None,
        max_pool_size=None,
        n_subsets=1,
        max_subset_size=None,
        random_state=None,
        n_jobs=None,
        device="auto",
        memory_budget=None,
        matmul_precision="float32",
        algorithm="matmul",
        progress=True,
        foreground=None,
    ):
        self.topmin_min = topmin_min
        self.topmin_max = topmin_max
        self.novelty = novelty
        self.reduction = reduction
        self.radius = radius
        self.repeat_ratio = repeat_ratio
        self.contamination = contamination
        self.threshold = threshold
        self.alpha = alpha
        self.fdr = fdr
        self.max_pool_size = max_pool_size
        self.n_subsets = n_subsets
        self.max_subset_size = max_subset_size
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.device = device
        self.memory_budget = memory_budget
        self.matmul_precision = matmul_precision
        self.algorithm = algorithm
        self.progress = progress
        self.foreground = foreground

    _parameter_constraints = {
        "topmin_min": [Interval(numbers.Real, 0, 1, closed="left")],
        "topmin_max": [Interval(numbers.Real, 0, 1, closed="right")],
        "novelty": ["boolean"],
        "reduction": [Options("interval", "min")],
        "radius": [None, Interval(numbers.Integral, 0, None, closed="left")],
        "repeat_ratio": [None, Interval(numbers.Real, 0, 1, closed="neither")],
        "contamination": CONTAMINATION,
        "threshold": [None, Interval(numbers.Real, 0, None, closed="left")],
        "alpha": [None, Interval(numbers.Real, 0, 1, closed="neither")],
        "fdr": [None, Interval(numbers.Real, 0, 1, closed="neither")],
        "max_pool_size": [None, Interval(numbers.Integral, 2, None, closed="left")],
        "n_subsets": [Interval(numbers.Integral, 1, None, closed="left")],
        "max_subset_size": [None, Interval(numbers.Integral, 2, None, closed="left")],
        "random_state": [None, "random_state"],
        "n_jobs": [None, Interval(numbers.Integral, None, None)],
        "device": [DEVICE],
        "memory_budget": [None, Interval(numbers.Integral, 1, None, closed="left")],
        "matmul_precision": [Options(*_msm.PRECISIONS)],
        "algorithm": [Options(*_msm.ALGORITHMS)],
        "progress": ["boolean"],
        "foreground": [None, Options("auto", "always")],
    }

    def _check_params(self):
        validate_params(self)
        if not self.topmin_min < self.topmin_max:
            raise ValueError(
                "need topmin_min < topmin_max, got "
                f"topmin_min={self.topmin_min!r}, topmin_max={self.topmin_max!r}"
            )

        if self.threshold is not None and (self.alpha is not None or self.fdr is not None):
            raise ValueError("give threshold, or alpha / fdr to set it from known-good parts, not both")
        if self.alpha is not None and self.fdr is not None:
            raise ValueError(
                "give alpha (new images against the pool, novelty=True) or fdr (the batch against its "
                "references), not both"
            )
        if self.foreground is not None and self.novelty:
            raise ValueError(
                f"foreground={self.foreground!r} masks the background of a batch scored on its own; "
                "it is not available with novelty=True (use foreground=None)"
            )
        if self.alpha is not None and not self.novelty:
            raise ValueError(
                "alpha sets the false-alarm rate of new images scored against a pool: it needs "
                "novelty=True (to label a batch against known-good references, use fdr)"
            )

    def __sklearn_tags__(self):
        return input_tags(super().__sklearn_tags__(), transformer=True)

    def _more_tags(self):  # scikit-learn < 1.6
        return {"X_types": ["3darray"]}

    def _bounds(self, n_images):
        """``(k_min, k_max)`` for an image among ``n_images`` (itself included)."""
        if self.reduction == "min":
            return 0, 1
        return _msm.interval_bounds(n_images, self.topmin_min, self.topmin_max)

    def fit(self, X, y=None, references=None):
        """Score every image of the batch ``X`` against the others.

        Parameters
        ----------
        X : FeatureSets or array-like of shape (n_images, n_sets, grid_h, grid_w, dim)
            Feature sets (output of :class:`LNAMDTransformer`); raw arrays are
            L2-normalised per patch.
        y : None
            Ignored.
        references : FeatureSets or array-like of shape (n_refs, n_sets, grid_h, grid_w, dim), default=None
            Known-normal images (few-shot, the paper's appendix A.6): they
            join the scorers of every image of ``X`` (and of each subset) but
            are never scored themselves. Made like ``X`` (same backbone,
            layers and LNAMD settings). With ``novelty=True`` they stay in
            the pool.

        Returns
        -------
        self : object
        """
        self._check_params()
        X = as_feature_sets(X)
        refs = None
        if references is not None:
            refs = as_feature_sets(references)
            _check_compatible(refs, X, "the references", "the batch")
        n = X.n_images
        n_refs = 0 if refs is None else refs.n_images
        self._check_batch_size(n, n_refs)
        self.device_ = resolve_device(self.device)
        if n + n_refs < 2:  # a pool of one image (a golden sample): it scores, it is not scored
            if self.fdr is not None or self.alpha is not None:
                self._calibration_error_for_one_image()
            return self._fit_one_image_pool(X)
        if self.matmul_precision == "bfloat16" and not _msm.bf16_products_supported():
            raise ValueError(
                f"matmul_precision='bfloat16' needs torch >= 2.8 (bfloat16 products with float32 "
                f"outputs); this is torch {torch.__version__}: use 'tf32' or upgrade torch"
            )
        if self.matmul_precision != "float32" and self.device_.type != "cuda":
            raise ValueError(
                f"matmul_precision={self.matmul_precision!r} needs a CUDA device; the CPU computes in float32"
            )
        if self.algorithm == "fused" and (reason := _msm_fused.unavailable_reason(self.device_)):
            raise ValueError(reason)
        if self.foreground is not None and refs is not None:
            raise ValueError(
                f"foreground={self.foreground!r} masks the background of a batch scored on its own; "
                "it cannot be combined with references (use foreground=None)"
            )
        copies = self._copies(X, "the batch")
        ref_copies = None if refs is None else self._copies(refs, "the references")
        if refs is not None and (X.turns or None) != (refs.turns or None):
            raise ValueError(f"the references carry the turned copies {refs.turns!r}, the batch {X.turns!r}: make "
                             "them with the same ViTPatchTransformer(turns=...)")
        self.turns_ = tuple(X.turns) if copies is not None else ()
        features = self._foreground(X)
        budget = self.memory_budget or _msm.default_memory_budget(self.device_)
        self.subsets_ = self._split(n, n_refs)
        self._check_fdr(refs, len(self.subsets_))
        set_ids = range(X.features.shape[1])
        whole = len(self.subsets_) == 1
        # a pool scored whole keeps its best-match lists from the same tables (see _set_pool)
        keep = self._keep(n + n_refs) if self.novelty and whole else None
        jobs = [
            (_msm_batch.score_batch, (
                features,
                None if whole else idx,
                set_ids,
                self._bounds(len(idx) + n_refs),
                self.device_,
                budget,
                self.matmul_precision,
                self.algorithm,
                self.radius,
                None if refs is None else refs.features,
                self.repeat_ratio,
                self._bounds,
                keep,
                copies,
                ref_copies,
            ), _msm_batch.batch_pairs(len(idx), n_refs, len(set_ids), len(self.turns_)))
            for idx in self.subsets_
        ]
        results = self._run(jobs, "mutual scoring")
        best = None
        if keep is not None:
            results, best = [results[0][0]], results[0][1]
        set_scores = np.empty((n, len(set_ids)) + X.grid_size, dtype=np.float32)
        for idx, part in zip(self.subsets_, results):
            set_scores[idx] = part
        if self.foreground_applied_:
            set_scores = _foreground.fill_background(set_scores, self.foreground_masks_)
        self.set_patch_scores_ = set_scores
        self.patch_scores_ = set_scores.mean(axis=1)
        self.input_size_, self.original_sizes_, self.crop_mode_ = X.input_size, X.original_sizes, X.crop_mode
        self.anomaly_maps_ = self._upsample(self.patch_scores_, X.input_size)
        self.anomaly_scores_ = self.anomaly_maps_.reshape(n, -1).max(axis=1)
        for name in _FIT_STATE:
            self.__dict__.pop(name, None)
        ref_best = None
        if refs is not None and whole and (self.repeat_ratio is None or keep is not None):
            self.reference_scores_, ref_best = self._reference_scores(X, refs, budget, keep, copies, ref_copies)
            if self.repeat_ratio is None:
                self.pvalues_ = conformal_pvalues(self.reference_scores_, self.anomaly_scores_)
            else:
                del self.reference_scores_
        if self.novelty:
            features = X.features if refs is None else np.concatenate([X.features, refs.features])
            sources = None
            if X.sources is not None and (refs is None or refs.sources is not None):
                sources = X.sources + (() if refs is None else refs.sources)
            if best is not None and refs is not None:
                best = np.concatenate([best, ref_best])
            if copies is not None and refs is not None:
                copies = np.concatenate([copies, ref_copies])
            self._set_pool(features, _pool_info(X, sources), self.device_, budget, best, copies)
        self.threshold_, self.labels_ = self._decide(self.anomaly_scores_)
        self._output = self._image_scores(X, self.patch_scores_, self.anomaly_maps_, self.anomaly_scores_,
                                          self.__dict__.get("pvalues_"))
        self.anomaly_masks_ = self._output.anomaly_masks
        if self.novelty:
            self.offset_ = -self.threshold_
        return self

    def _copies(self, X, what):
        """The turned copies of ``X`` as feature sets (``_msm_batch.stack_copies``), or None without copies."""
        if X.turned is None and not X.turns:
            return None
        n_turns = len(X.turns or ())
        shape = None if X.turned is None else X.turned.shape
        if n_turns == 0 or shape != (X.n_images, n_turns) + X.features.shape[1:]:
            raise ValueError(f"the turned copies of {what} must have shape (n_images, n_turns) + "
                             f"{X.features.shape[1:]} with one name per copy in turns, got {shape} "
                             f"and turns={X.turns!r}")
        for name, value, instead in (("radius", self.radius, "radius=None, or features without turns"),
                                     ("foreground", self.foreground, "foreground=None")):
            if value is not None:
                raise ValueError(f"{name}={value!r} cannot be combined with the turned copies {X.turns!r}: a "
                                 f"turned part has its patches elsewhere on the grid; use {instead}")
        return _msm_batch.stack_copies(X.turned)

    def __setstate__(self, state):
        # pickled before turned copies existed (a saved model): fitted without them
        state = dict(state)
        if "device_" in state:
            state.setdefault("turns_", ())
        if "_pool_sets" in state:
            state.setdefault("_pool_copies", None)
        super().__setstate__(state)

    def _foreground(self, X):
        """The feature sets MSM scores: with ``foreground``, the background patches zeroed."""
        self.foreground_masks_, self.foreground_applied_, self.foreground_stats_ = None, False, None
        if self.foreground is None:
            return X.features
        masks, within, border = _foreground.foreground_masks(X.features[:, -1])
        self.foreground_masks_ = masks
        self.foreground_stats_ = {"within_share": within, "border_foreground": border}
        self.foreground_applied_ = self.foreground == "always" or _foreground.is_object_on_background(
            within, border, X.grid_size)
        return _foreground.mask_features(X.features, masks) if self.foreground_applied_ else X.features

    def _check_fdr(self, refs, n_subsets):
        if self.fdr is None:
            return
        if refs is None:
            raise ValueError(
                "fdr calibrates the batch against known-good references: give references=<good parts> "
                "to fit (or use alpha with novelty=True to calibrate on a pool)"
            )
        if n_subsets > 1 or self.repeat_ratio is not None:
            raise ValueError(
                "fdr needs the batch scored whole and unfiltered (the references' scores must be made "
                "like the batch's): use n_subsets=1, max_subset_size=None and repeat_ratio=None"
            )

    def _decide(self, scores):
        """``(threshold_, labels_)`` of the fitted batch, by the one rule the parameters choose."""
        if self.fdr is not None:  # Benjamini-Hochberg on the p-values against the references
            return fdr_decision(scores, self.pvalues_, self.reference_scores_, self.fdr)
        if self.alpha is not None:
            threshold = self._alpha_threshold()
            return threshold, labels_above(scores, threshold)
        return threshold_scores(scores, self.contamination, self.threshold)

    # ------------------------------------------------------------ conformal calibration

    def _keep(self, n_pool):
        """How many best matches per patch the pool keeps: enough for ``max_pool_size`` images."""
        cap = max(n_pool, self.max_pool_size or 0)
        return self._bounds(cap + 1)[1]

    def _set_pool(self, features, info, device, budget, best=None, copies=None):
        """Keep ``features`` (and the turned ``copies``) as the novelty pool, with its best-match lists and
        calibration scores."""
        self._pool_sets, self._pool_inv_norms = _msm_batch.prepare_pool(features)
        self._pool_copies = None if copies is None else _msm_batch.prepare_pool(copies)
        self._pool_info = dict(info, turns=self.turns_ or None)
        if best is None:
            n_pool = len(features)
            with progress_bar(_msm_batch.batch_pairs(n_pool, 0, features.shape[1], len(self.turns_)),
                              "pool calibration", self.progress, unit="pair") as bar:
                best = _msm_batch.best_matches(features, self._keep(n_pool), device, budget,
                                               self.matmul_precision, self.radius, bar.update, copies)
        self._pool_best = best
        self.__dict__.pop("calibration_scores_", None)
        n_pool = len(features)
        if n_pool < 2:
            return
        set_scores = _msm_batch.kept_scores(best, self._bounds(n_pool + 1))
        patch_scores = set_scores.mean(axis=1).reshape((n_pool,) + features.shape[2:4])
        maps = self._upsample(patch_scores, info["input_size"], device)
        scores = maps.reshape(n_pool, -1).max(axis=1)
        if np.isfinite(scores).all():
            self.calibration_scores_ = scores

    def _calibration(self):
        if "calibration_scores_" in self.__dict__:
            return self.calibration_scores_
        if self._pool_sets.shape[1] < 2:
            raise ValueError(
                "a pool of one image has no other image to score it, so it cannot calibrate p-values "
                "or alpha: fit the pool on 2 or more good parts (or add some with partial_fit)"
            )
        raise ValueError(
            f"with topmin_max={self.topmin_max!r} a pool image's score averages over every scorer, "
            "the new image included, so it has no bound to calibrate p-values or alpha with: use "
            "topmin_max < 1"
        )

    def _alpha_threshold(self):
        return conformal_threshold(self._calibration(), self.alpha, "the pool (novelty=True)")

    def _reference_scores(self, X, refs, budget, keep=None, copies=None, ref_copies=None):
        """Each reference scored by the batch and the other references, with the batch's bounds.

        A batch image ``x`` is scored by the rest of the batch and the
        references; a reference ``r`` by the batch and the other references.
        Given the rest of the batch, the scores of ``{x} + references`` are
        one symmetric function of them, so when ``x`` is good and
        exchangeable with the references its p-value is valid.
        """
        n, n_refs = X.n_images, refs.n_images
        n_sets = refs.features.shape[1]
        with progress_bar(_msm_batch.batch_pairs(n_refs, n, n_sets, len(self.turns_)), "reference scores",
                          self.progress, unit="pair") as bar:
            out = _msm_batch.score_batch(
                refs.features, None, range(n_sets), self._bounds(n + n_refs), self.device_,
                budget, self.matmul_precision, self.algorithm, self.radius, X.features, keep=keep,
                copies=ref_copies, reference_copies=copies, progress=bar.update,
            )
        set_scores, best = out if keep is not None else (out, None)
        maps = self._upsample(set_scores.mean(axis=1), X.input_size)
        return maps.reshape(n_refs, -1).max(axis=1), best

    def _fit_one_image_pool(self, X):
        """``novelty=True`` with one image: keep it as the pool; nothing of the batch is scored.

        Without a batch score there is nothing to set a threshold from: the
        ``threshold`` parameter gives it, else labels and masks of new images
        are unavailable (their scores and maps are not).
        """
        for name in ("set_patch_scores_", "patch_scores_", "anomaly_maps_", "anomaly_scores_", "labels_",
                     "anomaly_masks_", "subsets_", "_output") + _FIT_STATE:
            self.__dict__.pop(name, None)
        self.input_size_, self.original_sizes_, self.crop_mode_ = X.input_size, X.original_sizes, X.crop_mode
        self.threshold_ = None if self.threshold is None else float(self.threshold)
        copies = self._copies(X, "the pool")
        self.turns_ = tuple(X.turns) if copies is not None else ()
        self._set_pool(X.features, _pool_info(X, X.sources), self.device_, None,
                       best=np.full(X.features.shape[:2] + (X.features.shape[2] * X.features.shape[3],
                                                            self._keep(1)), -np.inf, dtype=np.float32),
                       copies=copies)
        if self.threshold_ is not None:
            self.offset_ = -self.threshold_
        return self

    @property
    def pool_(self):
        """The pool that scores new images (``novelty=True``), as :class:`FeatureSets`."""
        if "_pool_sets" not in self.__dict__:
            raise AttributeError("pool_ exists only after fit with novelty=True")
        turned = None
        if self._pool_copies is not None:  # (n_sets, N, n_turns * h, w, C) -> (N, n_turns, n_sets, h, w, C)
            sets = self._pool_copies[0]
            n_sets, N, _, w, dim = sets.shape
            h = self._pool_sets.shape[2]
            turned = sets.reshape(n_sets, N, -1, h, w, dim).transpose(1, 2, 0, 3, 4, 5)
        return FeatureSets(features=self._pool_sets.transpose(1, 0, 2, 3, 4), turned=turned, **self._pool_info)

    def _run(self, jobs, desc):
        """Results of ``jobs`` (function, args, image pairs) through joblib, with a progress bar.

        In this process the bar advances tile by tile (the functions' own
        ``progress``); with parallel workers, job by job as results arrive.
        """
        total = sum(pairs for _, _, pairs in jobs)
        with progress_bar(total, desc, self.progress, unit="pair") as bar:
            if effective_n_jobs(self.n_jobs) == 1:
                return [function(*args, progress=bar.update) for function, args, _ in jobs]
            results = []
            done = Parallel(n_jobs=self.n_jobs, return_as="generator")(
                delayed(function)(*args) for function, args, _ in jobs)
            for (_, _, pairs), result in zip(jobs, done):
                results.append(result)
                bar.update(pairs)
            return results

    def check_batch(self, n_images, n_references=0):
        """Check the parameters against a batch size, before any feature is computed.

        What :meth:`fit` checks of the parameters and the batch, without the
        features: the parameter table, that mutual scoring has 2 images or
        more (or a pool with ``novelty=True``), and that the subsets
        (``n_subsets``, ``max_subset_size``) hold 2 images or more each. A
        caller about to run the backbone (the command line) asks it first, so
        a bad setting fails in a second, not after the long computation.

        Parameters
        ----------
        n_images : int
            Images of the batch ``fit`` will be given.
        n_references : int, default=0
            Known-normal images of ``fit``'s ``references``.

        Returns
        -------
        n_subsets : int
            The number of subsets the batch will be scored in.

        Raises
        ------
        ValueError
            If a parameter is invalid or the batch cannot be scored with it.
        """
        self._check_params()
        self._check_batch_size(n_images, n_references)
        if n_images + n_references < 2:  # a one-image pool: nothing is split
            return 1
        return self._n_subsets(n_images, n_references)

    def _check_batch_size(self, n, n_refs):
        if n + n_refs < 2 and not self.novelty:
            raise ValueError(
                f"mutual scoring needs at least 2 images in the batch, got {n}: "
                "an image alone has nothing to be compared with (a single reference "
                "can score new images: novelty=True)"
            )

    def _n_subsets(self, n, n_refs):
        n_subsets = self.n_subsets
        if self.max_subset_size is not None:
            n_subsets = max(n_subsets, math.ceil(n / self.max_subset_size))
        if n_subsets > 1 and n // n_subsets + n_refs < 2:
            raise ValueError(
                f"{n} images cannot be split into {n_subsets} subsets of 2 images or more "
                f"(n_subsets={self.n_subsets}, max_subset_size={self.max_subset_size})"
            )
        return n_subsets

    def _split(self, n, n_refs=0):
        n_subsets = self._n_subsets(n, n_refs)
        if n_subsets == 1:
            return [np.arange(n)]
        order = check_random_state(self.random_state).permutation(n)
        return [np.sort(part) for part in np.array_split(order, n_subsets)]

    def _calibration_error_for_one_image(self):
        what = "alpha" if self.alpha is not None else "fdr"
        raise ValueError(
            f"{what} needs known-good parts to calibrate on, and a pool of one image has no other "
            "image to score it: fit on 2 or more good parts"
        )

    def _image_scores(self, X, patch_scores, maps, scores, pvalues=None):
        masks = None
        if self.threshold_ is not None:  # None: a one-image pool without a threshold
            masks = defect_masks(maps, labels_above(scores, self.threshold_))
        return ImageScores(
            anomaly_masks=masks,
            threshold=self.threshold_,
            pvalues=pvalues,
            scores=scores,
            embeddings=X.embeddings,
            salient_features=salient_features(X, patch_scores),
            sources=X.sources,
            anomaly_maps=maps,
            input_size=X.input_size,
            original_sizes=X.original_sizes,
            crop_mode=X.crop_mode,
        )

    def _upsample(self, patch_scores, input_size, device=None):
        if input_size is None or tuple(input_size) == patch_scores.shape[1:]:
            return patch_scores.copy()
        maps = np.empty((len(patch_scores),) + tuple(input_size), dtype=np.float32)
        device = device or self.device_
        with torch.inference_mode():
            for start in range(0, len(patch_scores), 64):
                grid = torch.as_tensor(patch_scores[start : start + 64], device=device)
                up = F.interpolate(grid[:, None], size=tuple(input_size), mode="bilinear", align_corners=True)
                maps[start : start + len(grid)] = up[:, 0].cpu().numpy()
        return maps

    def fit_transform(self, X, y=None, references=None):
        """Fit on the batch and return its :class:`ImageScores` (for RsCIN).

        Parameters
        ----------
        X : FeatureSets or array-like of shape (n_images, n_sets, grid_h, grid_w, dim)
            The batch.
        y : None
            Ignored.
        references : FeatureSets or array-like, default=None
            Known-normal scorers; see :meth:`fit`.

        Returns
        -------
        scores : ImageScores
            Image scores, anomaly maps, image embeddings and salient features
            of the batch.
        """
        return self.fit(X, references=references)._output

    def fit_predict(self, X, y=None, references=None):
        """Fit on the batch and return its labels (1 normal, -1 anomalous).

        Unlike :class:`~sklearn.neighbors.LocalOutlierFactor`, this is also
        available with ``novelty=True``: the batch's own scores come from
        mutual scoring, which never lets an image score itself.

        Parameters
        ----------
        X : FeatureSets or array-like of shape (n_images, n_sets, grid_h, grid_w, dim)
            The batch.
        y : None
            Ignored.
        references : FeatureSets or array-like, default=None
            Known-normal scorers; see :meth:`fit`.

        Returns
        -------
        labels : ndarray of shape (n_images,)
        """
        return self.fit(X, references=references).labels_

    # ------------------------------------------------------------ new images

    def transform(self, X):
        """Image scores of new images (``novelty=True`` only).

        Each image of ``X`` is scored against the pool (see
        :meth:`score_samples`) and its :class:`ImageScores` returned, anomaly
        maps included: in a :class:`~sklearn.pipeline.Pipeline` this hands
        new images to :class:`RsCINRescorer` ``(novelty=True)``.

        Without novelty the detector is transductive and ``transform``
        refuses every input, the fitted batch included: the scores of a
        batch come from :meth:`fit_transform` or :meth:`fit_predict`, which
        are what a :class:`~sklearn.pipeline.Pipeline`'s ``fit``,
        ``fit_transform`` and ``fit_predict`` call (the method exists because
        a Pipeline requires it of its intermediate steps). Returning the
        fitted batch's scores would need that batch to be recognised exactly,
        by a hash of all its features at every fit (seconds to tens of
        seconds for a large batch: ``benchmarks/RESULTS.md``, "Docstrings'
        numbers"), a cost paid by every fit; anything cheaper could hand one
        batch's scores to another.

        Parameters
        ----------
        X : FeatureSets or array-like of shape (n_images, n_sets, grid_h, grid_w, dim)
            Feature sets made like the pool's.

        Returns
        -------
        scores : ImageScores
        """
        check_is_fitted(self, "device_")
        if not self.novelty:
            raise ValueError(
                "MutualScoringDetector(novelty=False) scores only the batch it is fitted on, and "
                "only in fit: use fit_transform (or fit_predict) on a batch, or novelty=True "
                "to score new images with transform"
            )
        return self._score_new(X)

    _batch_alternative = "without it, use fit_predict on the whole batch"
    _no_offset_message = (
        "a pool of one image has no scores of its own to set a threshold from: give "
        "threshold=<a score> (e.g. threshold_ of a detector fitted on a batch), or use "
        "score_samples / transform, which need none"
    )

    def _anomaly_scores_new(self, X):
        """Each image of ``X`` scored by the pool alone (the novelty mixin's ``score_samples``).

        Exactly as it would be in the batch pool + {image}: for each pool
        image the distance to its nearest patch, the interval average of those
        ``N`` distances (``k`` bounds of a batch of ``N + 1``), the mean over
        the feature sets, the upsampled map and its maximum. The images of
        ``X`` do not score each other, so a new image's score does not depend
        on what else is scored with it.
        """
        return self._score_new(X).scores

    def _score_new(self, X):
        check_is_fitted(self, "pool_")
        raw = not isinstance(X, FeatureSets)
        X = as_feature_sets(X)
        pool = self.pool_
        if raw and X.features.shape[1] == len(pool.set_index):
            X.set_index = pool.set_index  # a raw array says nothing of its sets: take them as the pool's
        _check_compatible(X, pool, "the new images", "the pool")
        n_pool, n_new = pool.n_images, X.n_images
        # the device as set now (a saved model may be loaded where the fitted one is absent)
        device = resolve_device(self.device)
        budget = self.memory_budget or _msm.default_memory_budget(device)
        k_bounds = self._bounds(n_pool + 1)  # as if each new image had joined the pool
        chunks, parts = _novelty_jobs(n_new, n_pool, effective_n_jobs(self.n_jobs))
        n_sets = len(pool.set_index)
        best = self._run([
            (_msm_batch.pool_best_matches, (
                X.features[c], *_pool_part(self._pool_sets, self._pool_inv_norms, p), k_bounds[1],
                device, budget, self.matmul_precision, self.radius,
                None if self._pool_copies is None else _pool_part(*self._pool_copies, p),
            ), n_sets * (c.stop - c.start) * (p.stop - p.start) * (1 + len(self.turns_)))
            for c in chunks
            for p in parts
        ], "novelty scoring")
        set_scores = np.concatenate([
            _msm_batch.merge_best_matches(best[i * len(parts) : (i + 1) * len(parts)], k_bounds)
            for i in range(len(chunks))
        ])
        patch_scores = set_scores.mean(axis=1).reshape((n_new,) + X.grid_size)
        maps = self._upsample(patch_scores, X.input_size, device)
        scores = maps.reshape(n_new, -1).max(axis=1)
        calibration = self.__dict__.get("calibration_scores_")
        pvalues = None if calibration is None else conformal_pvalues(calibration, scores)
        return self._image_scores(X, patch_scores, maps, scores, pvalues)

    @available_if(requires_novelty("pvalues"))
    def pvalues(self, X):
        """Conformal p-values of new images against the pool (``novelty=True``).

        A new image's p-value is ``(1 + #{pool images whose calibration
        score >= its score}) / (N + 1)``. Its score is the one it would get
        in the batch pool + {image}; each pool image's calibration score
        (``calibration_scores_``) is its score in that same batch with the
        new image taken infinitely far from all its patches, which can only
        raise it. So this p-value is at least the full-conformal p-value
        (the new image ranked among the N + 1 scores of that batch, a
        symmetric function of its images), and when a new good part is
        exchangeable with the pool's parts, ``P(p <= a) <= a`` for every
        ``a``, in finite samples. Flagging ``p <= alpha`` is what ``alpha``
        does. README "Decisions you can trust" has the measured rates.

        Parameters
        ----------
        X : FeatureSets or array-like of shape (n_images, n_sets, grid_h, grid_w, dim)
            Feature sets made like the pool's.

        Returns
        -------
        pvalues : ndarray of shape (n_images,)
            In ``[1 / (N + 1), 1]``; small means anomalous.
        """
        self._calibration()
        return self._score_new(X).pvalues

    @available_if(requires_novelty("partial_fit"))
    def partial_fit(self, X, y=None):
        """Add accepted parts to the pool (``novelty=True``); fit on them when not fitted yet.

        The pool's best-match lists are updated with the products of the new
        parts against the pool only (no N x N refit), so the pool, its
        calibration scores, the p-values and the ``alpha`` threshold are
        those of a detector fitted on the larger pool (to float32 rounding).
        With ``max_pool_size``, the oldest images are dropped beyond it, and
        the kept pool is scored against itself again. Without ``alpha``,
        ``threshold_`` stays the one set at fit. The fitted batch's own
        scores (``anomaly_scores_``, ``labels_``) are not changed.

        Parameters
        ----------
        X : FeatureSets or array-like of shape (n_images, n_sets, grid_h, grid_w, dim)
            Feature sets of parts accepted as good, made like the pool's.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        if "_pool_sets" not in self.__dict__:
            return self.fit(X)
        self._check_params()
        raw = not isinstance(X, FeatureSets)
        X = as_feature_sets(X)
        pool = self.pool_
        if raw and X.features.shape[1] == len(pool.set_index):
            X.set_index = pool.set_index
        _check_compatible(X, pool, "the added images", "the pool")
        if X.features.dtype != self._pool_sets.dtype:
            raise ValueError(
                f"the added images' features are {X.features.dtype}, the pool's {self._pool_sets.dtype}: "
                "make them with the same LNAMDTransformer settings"
            )
        if (X.turns or None) != (pool.turns or None):
            raise ValueError(f"the added images carry the turned copies {X.turns!r}, the pool {pool.turns!r}: make "
                             "them with the same ViTPatchTransformer(turns=...)")
        new_copies = self._copies(X, "the added images")
        old_copies = None if new_copies is None else self._pool_copies[0].transpose(1, 0, 2, 3, 4)
        device = resolve_device(self.device)
        budget = self.memory_budget or _msm.default_memory_budget(device)
        old = pool.features
        info = dict(self._pool_info)
        if info["sources"] is not None:
            info["sources"] = info["sources"] + X.sources if X.sources is not None else None
        features = np.concatenate([old, X.features])
        n_total, keep = len(features), self._pool_best.shape[-1]
        drop = 0 if self.max_pool_size is None else max(0, n_total - self.max_pool_size)
        best = None
        if drop == 0 and self._bounds(n_total + 1)[1] <= keep:  # the kept lists are long enough: update them
            new_sets, new_inv = _msm_batch.prepare_pool(X.features)
            added_copies = None if new_copies is None else _msm_batch.prepare_pool(new_copies)
            n_old, n_new, n_sets = len(old), X.n_images, old.shape[1]
            n_turns = len(self.turns_)
            pairs = n_sets * 2 * n_old * n_new * (1 + n_turns) + _msm_batch.batch_pairs(n_new, 0, n_sets, n_turns)
            with progress_bar(pairs, "adding to the pool", self.progress, unit="pair") as bar:
                args = (device, budget, self.matmul_precision, self.radius)
                old_vs_new = _msm_batch.pool_best_matches(old, new_sets, new_inv, n_new, *args, added_copies,
                                                          progress=bar.update)
                new_vs_old = _msm_batch.pool_best_matches(X.features, self._pool_sets, self._pool_inv_norms, keep,
                                                          *args, self._pool_copies, progress=bar.update)
                new_vs_new = _msm_batch.best_matches(X.features, keep, *args, progress=bar.update, copies=new_copies)
            best = np.concatenate([_msm_batch.merge_kept([self._pool_best, old_vs_new], keep),
                                   _msm_batch.merge_kept([new_vs_old, new_vs_new], keep)])
        copies = None if new_copies is None else np.concatenate([old_copies, new_copies])
        if drop:
            features = features[drop:]
            copies = None if copies is None else copies[drop:]
            if info["sources"] is not None:
                info["sources"] = info["sources"][drop:]
        self._set_pool(features, info, device, budget, best, copies)
        if self.alpha is not None:
            self.threshold_ = self._alpha_threshold()
        if self.threshold_ is not None:
            self.offset_ = -self.threshold_
        return self


# What a fit sets besides the batch's scores, cleared at every fit.
_FIT_STATE = ("_pool_sets", "_pool_inv_norms", "_pool_copies", "_pool_info", "_pool_best", "offset_",
              "calibration_scores_", "pvalues_", "reference_scores_")


def _pool_part(sets, inv_norms, part):
    """The images ``part`` (a slice) of a pool made by ``prepare_pool``: (sets, inv_norms)."""
    return sets[:, part], None if inv_norms is None else inv_norms[:, part]


def _novelty_jobs(n_new, n_pool, n_workers):
    """Slices of new images and of the pool, one job per pair.

    New images are spread over the workers; when there are fewer new images
    than workers, the pool is cut into parts too, whose best matches are
    merged afterwards (so one image against a large pool uses every worker).
    """
    n_chunks = max(1, min(n_new, n_workers))
    n_parts = max(1, min(n_pool, n_workers // n_chunks))
    return (
        [slice(a[0], a[-1] + 1) for a in np.array_split(np.arange(n_new), n_chunks)],
        [slice(a[0], a[-1] + 1) for a in np.array_split(np.arange(n_pool), n_parts)],
    )


def _pool_info(X, sources):
    """What a novelty pool keeps of its feature sets besides the features (see ``pool_``)."""
    return dict(set_index=X.set_index, input_size=X.input_size, sources=sources, backbone=X.backbone,
                aggregation=X.aggregation)


def _check_compatible(X, pool, what, against):
    """Refuse features made otherwise than ``pool``'s, naming the setting that differs."""
    checks = [
        ("patch grid", X.grid_size, pool.grid_size),
        ("feature width", X.features.shape[-1], pool.features.shape[-1]),
        ("number of feature sets", X.features.shape[1], pool.features.shape[1]),
        ("backbone", X.backbone, pool.backbone),
        ("model input size", X.input_size, pool.input_size),
        ("(layer, LNAMD degree) of the feature sets", X.set_index, pool.set_index),
        ("aggregation (LNAMDTransformer aggregation, r_list)", X.aggregation, pool.aggregation),
    ]
    for name, mine, theirs in checks:
        if mine is None or theirs is None:  # raw arrays carry no such metadata
            continue
        if _plain(mine) != _plain(theirs):
            raise ValueError(
                f"{what} were made with another {name} than {against}: {mine!r} vs {theirs!r}; "
                f"make them with the same ViTPatchTransformer and LNAMDTransformer settings"
            )


def _plain(value):
    """Tuples of Python ints for comparing metadata (numpy ints, lists and tuples alike)."""
    if isinstance(value, (tuple, list, np.ndarray)):
        return tuple(_plain(v) for v in value)
    return value.item() if isinstance(value, np.generic) else value
