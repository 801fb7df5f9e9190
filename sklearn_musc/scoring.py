"""Mutual Scoring Mechanism (MSM), SPEC section 3: the images of a batch score each other."""

import hashlib
import math
import numbers

import numpy as np
import torch
import torch.nn.functional as F
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import _msm, _msm_fused
from ._batch import ImageScores
from ._device import resolve_device
from ._threshold import check_threshold, defect_masks, threshold_scores
from ._validation import as_feature_sets, check_contamination

__all__ = ["MutualScoringDetector"]

def _score_batch(features, rows, set_ids, k_bounds, device, budget, precision, algorithm):
    """Per-set patch scores of the images ``rows`` (None: all): (n, n_sets, h, w) float32.

    The images of a subset are gathered one set at a time, so no more than
    one set is ever copied on the host; with all images, a set laid out
    contiguously (as :class:`LNAMDTransformer` makes them) is not copied at all.
    Scores and the finiteness check stay on the device until every set is
    queued: nothing waits for the GPU inside the loop, so it computes one
    set while the host moves the next one.
    """
    n = len(features) if rows is None else len(rows)
    _, _, h, w, dim = features.shape
    L = h * w
    plan = _msm.Plan(n, L, dim, k_bounds[1], device, budget)
    where = device if plan.resident else torch.device("cpu")
    with torch.inference_mode():
        scores = torch.empty((n, len(set_ids), L), dtype=torch.float32, device=device)
        finite = torch.ones((), dtype=torch.bool, device=where)
        for s in set_ids:
            part = features[:, s] if rows is None else features[rows, s]
            Z = torch.as_tensor(part).reshape(n, L, dim)
            if Z.dtype not in (torch.float16, torch.float32):
                Z = Z.float()
            # Normalise where the set will live (idempotent for LNAMD output,
            # makes raw arrays safe for 2 - 2 x.y).
            Z = Z.to(where, non_blocking=True).float()  # moved as stored (float16: half the bytes)
            finite &= Z.isfinite().all()
            Z = F.normalize(Z, dim=-1)
            table = _msm.max_similarity_table(Z, plan, precision, algorithm)
            scores[:, s] = _msm.interval_average(table, *k_bounds)
            del table
        if not bool(finite):  # NaN scores are refused, not returned
            raise ValueError("features contains NaN or infinity")
        return scores.reshape(n, len(set_ids), h, w).cpu().numpy()


def _fingerprint(features):
    """Cheap identity of a feature array: its shape and one patch per image."""
    probe = np.ascontiguousarray(features[:, :, 0, 0, : min(8, features.shape[-1])], dtype=np.float32)
    return (features.shape, hashlib.blake2b(probe.tobytes(), digest_size=16).hexdigest())


class MutualScoringDetector(OutlierMixin, BaseEstimator):
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

    The detector is transductive, like
    :class:`~sklearn.neighbors.LocalOutlierFactor` with ``novelty=False``: it
    scores the batch it is fitted on. Use :meth:`fit_predict`, or
    :meth:`fit_transform` to hand the image scores to :class:`RsCINRescorer`.

    Parameters
    ----------
    topmin_min, topmin_max : float, default=0.0, 0.3
        Bounds of the rank interval, as fractions of the ``N - 1`` other
        images, ``0 <= topmin_min < topmin_max <= 1``. At least one image is
        always used (``k_max >= 1``), so batches of 2 to 4 images score.
    contamination : "auto" or float in (0, 0.5], default="auto"
        How image scores become labels when ``threshold`` is None. A float
        flags that share of the batch (the ``1 - contamination`` quantile is
        the threshold). "auto" needs no labels: when a two-component Gaussian
        mixture of the image scores clearly beats one Gaussian (BIC), the
        threshold splits the two clusters (a defect-heavy batch); otherwise
        it is ``median + 3 * 1.4826 * MAD`` (a clean or production-like batch,
        where normal images are the majority). See README "Labels".
    threshold : float >= 0 or None, default=None
        A fixed threshold on the image scores (e.g. ``threshold_`` of
        another batch of the same product); None uses ``contamination``.
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
        at most 32 MiB (CPU) or 2 GiB (CUDA). A batch whose table does not fit
        is refused with a ``MemoryError`` that proposes a subset size. With
        ``n_jobs > 1``, each concurrently scored subset has this budget.
    precision : {"float32", "tf32", "bfloat16"}, default="float32"
        Inputs of the matrix products. "float32" is exact (to float32
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
        GPU, hence not the default (see ``benchmarks/RESULTS.md``).

    Attributes
    ----------
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
    pixel_threshold_ : float
        Pixels of an anomalous image whose map value is strictly above it are
        marked; equal to ``threshold_`` (an image is anomalous exactly when
        its map exceeds the threshold somewhere).
    anomaly_masks_ : ndarray of shape (n_images, H, W), bool
        Binary defect masks at the size of ``anomaly_maps_``; empty for the
        images labelled 1. ``masks_to_original(anomaly_masks_,
        original_sizes_, input_size_)`` gives them at each image's size.
    input_size_ : (int, int) or None
        Model input size of the batch (from ``ViTPatchTransformer``).
    original_sizes_ : tuple of (int, int) or None
        Each image's original size; ``maps_to_original(anomaly_maps_,
        original_sizes_, input_size_)`` gives the maps at that resolution.
    subsets_ : list of ndarray
        Indices of the images of each subset.
    device_ : torch.device
        The device used.

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
    """

    def __init__(
        self,
        topmin_min=0.0,
        topmin_max=0.3,
        contamination="auto",
        threshold=None,
        n_subsets=1,
        max_subset_size=None,
        random_state=None,
        n_jobs=None,
        device="auto",
        memory_budget=None,
        precision="float32",
        algorithm="matmul",
    ):
        self.topmin_min = topmin_min
        self.topmin_max = topmin_max
        self.contamination = contamination
        self.threshold = threshold
        self.n_subsets = n_subsets
        self.max_subset_size = max_subset_size
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.device = device
        self.memory_budget = memory_budget
        self.precision = precision
        self.algorithm = algorithm

    def _check_params(self):
        if not 0.0 <= self.topmin_min < self.topmin_max <= 1.0:
            raise ValueError(
                "need 0 <= topmin_min < topmin_max <= 1, got "
                f"topmin_min={self.topmin_min!r}, topmin_max={self.topmin_max!r}"
            )
        check_contamination(self.contamination)
        check_threshold(self.threshold, nonnegative=True)
        if not isinstance(self.n_subsets, numbers.Integral) or self.n_subsets < 1:
            raise ValueError(f"n_subsets must be a positive int, got {self.n_subsets!r}")
        if self.max_subset_size is not None and (
            not isinstance(self.max_subset_size, numbers.Integral) or self.max_subset_size < 2
        ):
            raise ValueError(f"max_subset_size must be None or an int >= 2, got {self.max_subset_size!r}")
        if self.precision not in _msm.PRECISIONS:
            raise ValueError(f"precision must be one of {_msm.PRECISIONS}, got {self.precision!r}")
        if self.algorithm not in _msm.ALGORITHMS:
            raise ValueError(f"algorithm must be one of {_msm.ALGORITHMS}, got {self.algorithm!r}")
        if self.memory_budget is not None and (
            not isinstance(self.memory_budget, numbers.Integral) or self.memory_budget <= 0
        ):
            raise ValueError(f"memory_budget must be None or a positive int (bytes), got {self.memory_budget!r}")

    def _split(self, n):
        n_subsets = self.n_subsets
        if self.max_subset_size is not None:
            n_subsets = max(n_subsets, math.ceil(n / self.max_subset_size))
        if n // n_subsets < 2:
            raise ValueError(
                f"{n} images cannot be split into {n_subsets} subsets of 2 images or more"
            )
        if n_subsets == 1:
            return [np.arange(n)]
        order = check_random_state(self.random_state).permutation(n)
        return [np.sort(part) for part in np.array_split(order, n_subsets)]

    def fit(self, X, y=None):
        """Score every image of the batch ``X`` against the others.

        Parameters
        ----------
        X : FeatureSets or array-like of shape (n_images, n_sets, grid_h, grid_w, dim)
            Feature sets (output of :class:`LNAMDTransformer`); raw arrays are
            L2-normalised per patch.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        self._check_params()
        X = as_feature_sets(X)
        n = X.n_images
        if n < 2:
            raise ValueError(
                f"mutual scoring needs at least 2 images in the batch, got {n}: "
                "an image alone has nothing to be compared with"
            )
        self.device_ = resolve_device(self.device)
        if self.precision == "bfloat16" and not _msm.bf16_products_supported():
            raise ValueError(
                f"precision='bfloat16' needs torch >= 2.8 (bfloat16 products with float32 "
                f"outputs); this is torch {torch.__version__}: use 'tf32' or upgrade torch"
            )
        if self.precision != "float32" and self.device_.type != "cuda":
            raise ValueError(f"precision={self.precision!r} needs a CUDA device; the CPU computes in float32")
        if self.algorithm == "fused" and (reason := _msm_fused.unavailable_reason(self.device_)):
            raise ValueError(reason)
        budget = self.memory_budget or _msm.default_memory_budget(self.device_)
        self.subsets_ = self._split(n)
        set_ids = range(X.features.shape[1])
        whole = len(self.subsets_) == 1
        jobs = (
            delayed(_score_batch)(
                X.features,
                None if whole else idx,
                set_ids,
                _msm.interval_bounds(len(idx), self.topmin_min, self.topmin_max),
                self.device_,
                budget,
                self.precision,
                self.algorithm,
            )
            for idx in self.subsets_
        )
        results = Parallel(n_jobs=self.n_jobs)(jobs)
        set_scores = np.empty((n, len(set_ids)) + X.grid_size, dtype=np.float32)
        for idx, part in zip(self.subsets_, results):
            set_scores[idx] = part
        self.set_patch_scores_ = set_scores
        self.patch_scores_ = set_scores.mean(axis=1)
        self.input_size_, self.original_sizes_ = X.input_size, X.original_sizes
        self.anomaly_maps_ = self._upsample(self.patch_scores_, X.input_size)
        self.anomaly_scores_ = self.anomaly_maps_.reshape(n, -1).max(axis=1)
        self.threshold_, self.labels_ = threshold_scores(self.anomaly_scores_, self.contamination, self.threshold)
        self.pixel_threshold_ = self.threshold_
        self.anomaly_masks_ = defect_masks(self.anomaly_maps_, self.labels_, self.pixel_threshold_)
        self._output = ImageScores(
            scores=self.anomaly_scores_,
            embeddings=X.embeddings,
            salient_features=self._salient_features(X),
            sources=X.sources,
            threshold=self.threshold_,
        )
        self._fingerprint = _fingerprint(X.features)
        return self

    def _upsample(self, patch_scores, input_size):
        if input_size is None or tuple(input_size) == patch_scores.shape[1:]:
            return patch_scores.copy()
        maps = np.empty((len(patch_scores),) + tuple(input_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(patch_scores), 64):
                grid = torch.as_tensor(patch_scores[start : start + 64], device=self.device_)
                up = F.interpolate(grid[:, None], size=tuple(input_size), mode="bilinear", align_corners=True)
                maps[start : start + len(grid)] = up[:, 0].cpu().numpy()
        return maps

    def _salient_features(self, X):
        """MuSc-V2's anomaly-salient feature: each image's vector at its top patch.

        Taken from the second-to-last layer (the last when there is one) at
        its smallest degree.
        """
        layers = sorted({layer for layer, _ in X.set_index})
        layer = layers[-2] if len(layers) > 1 else layers[-1]
        s = min((r, i) for i, (lay, r) in enumerate(X.set_index) if lay == layer)[1]
        n = X.n_images
        top = self.patch_scores_.reshape(n, -1).argmax(axis=1)
        h, w = X.grid_size
        vectors = X.features[np.arange(n), s, top // w, top % w].astype(np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, np.finfo(np.float32).tiny)

    def fit_transform(self, X, y=None):
        """Fit on the batch and return its :class:`ImageScores` (for RsCIN).

        Parameters
        ----------
        X : FeatureSets or array-like of shape (n_images, n_sets, grid_h, grid_w, dim)
            The batch.
        y : None
            Ignored.

        Returns
        -------
        scores : ImageScores
            Image scores, image embeddings and salient features of the batch.
        """
        return self.fit(X)._output

    def transform(self, X):
        """Return the :class:`ImageScores` of the fitted batch.

        The detector is transductive: it can only transform the batch it was
        fitted on (what a :class:`~sklearn.pipeline.Pipeline` passes again);
        a different batch must be scored with ``fit_transform``.
        """
        check_is_fitted(self, "anomaly_scores_")
        X = as_feature_sets(X)
        if _fingerprint(X.features) != self._fingerprint:
            raise ValueError(
                "MutualScoringDetector scores the batch it is fitted on; "
                "call fit_transform (or fit_predict) on a new batch"
            )
        return self._output

    def fit_predict(self, X, y=None):
        """Fit on the batch and return its labels (1 normal, -1 anomalous).

        Parameters
        ----------
        X : FeatureSets or array-like of shape (n_images, n_sets, grid_h, grid_w, dim)
            The batch.
        y : None
            Ignored.

        Returns
        -------
        labels : ndarray of shape (n_images,)
        """
        return self.fit(X).labels_
