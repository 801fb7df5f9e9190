"""Mutual scoring of rgb + point-cloud samples, fused (docs/algorithm.rst, "2D + 3D fusion"): ``CrossModalDetector``."""

from __future__ import annotations

import numbers

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from . import _fusion_kernels as fk
from ._batch import ImageScores, MultimodalFeatures, salient_features
from ._device import resolve_device
from ._msm import interval_bounds
from ._novelty import NoveltyMixin
from .conformal import conformal_pvalues, fdr_decision
from .geometry import fit_geometry
from .thresholds import defect_masks, labels_above, threshold_scores
from ._validation import CONTAMINATION, DEVICE, Interval, Options, as_feature_sets, input_tags, validate_params

__all__ = ["CrossModalDetector"]


def _as_multimodal(X):
    if not isinstance(X, MultimodalFeatures):
        raise ValueError(
            f"X must be the MultimodalFeatures of a MultimodalTransformer (rgb and xyz feature sets), "
            f"got {type(X).__name__}"
        )
    rgb, xyz = as_feature_sets(X.rgb), as_feature_sets(X.xyz)
    if rgb.n_images != xyz.n_images:
        raise ValueError(f"the rgb and xyz features hold {rgb.n_images} and {xyz.n_images} samples")
    if rgb.turned is not None or xyz.turned is not None:
        raise ValueError(f"CrossModalDetector does not score with turned copies ({(rgb.turns or xyz.turns)!r}): make "
                         "the features without ViTPatchTransformer(turns=...)")
    if rgb.input_size != xyz.input_size:
        raise ValueError(
            f"the rgb and xyz features were made for different input sizes: {rgb.input_size} vs "
            f"{xyz.input_size}; give both transformers the same image_size"
        )
    if rgb.grid_size != xyz.grid_size:
        raise ValueError(
            f"the rgb and xyz patch grids differ: {rgb.grid_size} vs {xyz.grid_size}; give "
            "PointCloudPatchTransformer the ViT's patch_size so that a patch covers the same pixels"
        )
    if rgb.original_sizes is not None and rgb.input_size is not None:
        for size, source in zip(rgb.original_sizes, rgb.sources or [None] * rgb.n_images):
            if fit_geometry(size, rgb.input_size, rgb.crop_mode or "center")[1:] != fit_geometry(
                    size, rgb.input_size, xyz.crop_mode or "center")[1:]:
                raise ValueError(
                    f"the rgb image {source or ''} ({size[0]} x {size[1]}) was fitted to the input with "
                    f"crop_mode={rgb.crop_mode!r} and its point cloud with {xyz.crop_mode!r}, so their "
                    "patches cover different pixels; give ViTPatchTransformer(crop_mode='center')"
                )
    return rgb, xyz


def _unit(features):
    f = features.astype(np.float32)
    return f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), np.finfo(np.float32).tiny)


def _flat(X):
    """(n, sets, patches, dim) unit-norm features."""
    n, S, h, w, C = X.features.shape
    return _unit(X.features.reshape(n, S, h * w, C))


class CrossModalDetector(NoveltyMixin, OutlierMixin, BaseEstimator):
    """Zero-shot anomaly detection of rgb + point-cloud samples by fused mutual scoring.

    Each modality is scored as :class:`MutualScoringDetector` scores it:
    for every patch of a sample and every other sample, the distance to
    that sample's nearest patch; the distances ranked in
    ``[floor((R) topmin_min), floor((R) topmin_max))`` over the R other
    samples are averaged. The two modalities are then joined:

    - ``fusion="sum"``: the two anomaly maps (each the patch scores
      upsampled to the input size) are added;
    - ``fusion="cae"`` (MuSc-V2's cross-modal anomaly enhancement): before the
      interval average, each modality's distance table is enhanced with the
      other's, rank-mapped onto its own scale and weighted by how little the
      other modality's distances vary for that patch (docs/algorithm.rst);
      the two enhanced maps are added.

    The image score is the fused map's maximum. :meth:`fit_transform`
    returns :class:`ImageScores` whose salient feature is the pair (rgb
    feature at the rgb score's peak, 3D feature at the 3D score's peak), the
    joined embedding of MuSc-V2's RsCon: :class:`RsCINRescorer` after this
    step re-scores with it.

    Parameters
    ----------
    fusion : {"cae", "sum"}, default="cae"
        How the modalities are joined.
    topmin_min, topmin_max : float, default=0.0, 0.2
        Rank interval, as :class:`MutualScoringDetector`'s.
    novelty : bool, default=False
        Keep the fitted batch (and the references) as a pool that scores new
        samples (:meth:`score_samples`, :meth:`decision_function`,
        :meth:`predict`, :meth:`transform`).
    contamination : "auto" or float in (0, 0.5], default="auto"
        As :class:`MutualScoringDetector`'s: sets ``threshold_``.
    threshold : float or None, default=None
        A fixed threshold on the image scores instead.
    fdr : float in (0, 1) or None, default=None
        Label the batch by Benjamini-Hochberg at this false-discovery level
        on the p-values against the ``references`` given to :meth:`fit`
        (``pvalues_``), as :class:`MutualScoringDetector`'s ``fdr``.
    device : str, default="auto"
        Device of the distance computations.

    Attributes
    ----------
    anomaly_scores_ : ndarray of shape (n_samples,)
        Image scores of the batch (maximum of the fused map).
    anomaly_maps_ : ndarray of shape (n_samples, H, W)
        Fused maps at the input size.
    rgb_maps_, xyz_maps_ : ndarray of shape (n_samples, H, W)
        Each modality's map (after CAE with ``fusion="cae"``).
    rgb_patch_scores_, xyz_patch_scores_ : ndarray of shape (n_samples, grid_h, grid_w)
        Each modality's patch scores (after CAE with ``fusion="cae"``).
    patch_scores_ : ndarray of shape (n_samples, grid_h, grid_w)
        Fused patch scores (their sum).
    labels_ : ndarray of shape (n_samples,)
        1 normal, -1 anomalous.
    threshold_ : float
        Images scoring above it are labelled -1.
    anomaly_masks_ : ndarray of shape (n_samples, H, W), bool
        Defect masks of the samples labelled anomalous.
    input_size_, original_sizes_, crop_mode_ : tuple, tuple, str or None
        From the rgb features.
    offset_ : float
        With ``novelty=True``: ``-threshold_``.
    reference_scores_ : ndarray of shape (n_references,)
        When fitted with references: each reference scored by the batch and
        the other references, as a batch sample is (the calibration scores).
    pvalues_ : ndarray of shape (n_samples,)
        When fitted with references: the conformal p-value of each sample's
        score against ``reference_scores_``.

    See Also
    --------
    MultimodalTransformer : makes the features this detector scores.
    MutualScoringDetector : the same scoring for one modality.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_musc import CrossModalDetector, FeatureSets, MultimodalFeatures
    >>> rng = np.random.default_rng(0)
    >>> base = rng.normal(size=(1, 1, 4, 4, 8))
    >>> rgb = base + 0.1 * rng.normal(size=(6, 1, 4, 4, 8)); xyz = base + 0.1 * rng.normal(size=(6, 1, 4, 4, 8))
    >>> rgb[2, 0, 1, 1] += 3; xyz[2, 0, 1, 1] -= 3  # a defect seen in both modalities
    >>> X = MultimodalFeatures(rgb=FeatureSets(rgb, set_index=((0, 0),)), xyz=FeatureSets(xyz, set_index=((0, 0),)))
    >>> det = CrossModalDetector(device="cpu").fit(X)
    >>> int(det.anomaly_scores_.argmax())
    2
    """

    _parameter_constraints = {
        "fusion": [Options("cae", "sum")],
        "topmin_min": [Interval(numbers.Real, 0, 1, closed="left")],
        "topmin_max": [Interval(numbers.Real, 0, 1, closed="right")],
        "novelty": ["boolean"],
        "contamination": CONTAMINATION,
        "threshold": [None, Interval(numbers.Real, 0, None, closed="left")],
        "fdr": [None, Interval(numbers.Real, 0, 1, closed="neither")],
        "device": [DEVICE],
    }

    def __init__(self, *, fusion="cae", topmin_min=0.0, topmin_max=0.2, novelty=False, contamination="auto",
                 threshold=None, fdr=None, device="auto"):
        self.fusion = fusion
        self.topmin_min = topmin_min
        self.topmin_max = topmin_max
        self.novelty = novelty
        self.contamination = contamination
        self.threshold = threshold
        self.fdr = fdr
        self.device = device

    def __sklearn_tags__(self):
        return input_tags(super().__sklearn_tags__(), transformer=True)

    def fit(self, X, y=None, references=None):
        """Score every sample of the batch against the others.

        Parameters
        ----------
        X : MultimodalFeatures
            The batch (output of :class:`MultimodalTransformer`, LNAMD applied to each modality).
        y : None
            Ignored.
        references : MultimodalFeatures, default=None
            Known-normal samples: they join the scorers of every sample and
            are never scored themselves (with ``novelty=True`` they stay in the pool).

        Returns
        -------
        self : object
        """
        validate_params(self)
        if not self.topmin_min < self.topmin_max:
            raise ValueError(f"need topmin_min < topmin_max, got {self.topmin_min!r}, {self.topmin_max!r}")
        if self.fdr is not None and self.threshold is not None:
            raise ValueError("give threshold, or fdr to set it from known-good references, not both")
        if self.fdr is not None and references is None:
            raise ValueError("fdr calibrates the batch against known-good references: give references=<good "
                             "samples> to fit")
        rgb, xyz = _as_multimodal(X)
        pool = [_flat(rgb), _flat(xyz)]
        n = rgb.n_images
        if references is not None:
            ref_rgb, ref_xyz = _as_multimodal(references)
            pool = [np.concatenate([pool[0], _flat(ref_rgb)]), np.concatenate([pool[1], _flat(ref_xyz)])]
        if len(pool[0]) < 2:
            raise ValueError(f"mutual scoring needs at least 2 samples, got {len(pool[0])}")
        self.device_ = resolve_device(self.device)
        # the batch is the pool's first n rows, the references the others: each row scored by every
        # other sample (its own column dropped), so a reference is scored as a batch sample is
        tables = [fk.distance_tables(p, p, True, self.device_) for p in pool]
        bounds = interval_bounds(len(pool[0]), self.topmin_min, self.topmin_max)
        out = self._scores(rgb, xyz, [t[:, :n] for t in tables], bounds)
        ((self.rgb_patch_scores_, self.xyz_patch_scores_), self.rgb_maps_, self.xyz_maps_, self.anomaly_maps_,
         self.anomaly_scores_, _) = out
        for name in ("reference_scores_", "pvalues_"):
            self.__dict__.pop(name, None)
        if references is not None:
            self.reference_scores_ = self._scores(ref_rgb, ref_xyz, [t[:, n:] for t in tables], bounds)[4]
            self.pvalues_ = conformal_pvalues(self.reference_scores_, self.anomaly_scores_)
        self.patch_scores_ = self.rgb_patch_scores_ + self.xyz_patch_scores_
        self.input_size_, self.original_sizes_, self.crop_mode_ = rgb.input_size, rgb.original_sizes, rgb.crop_mode
        self.threshold_, self.labels_ = self._decide(self.anomaly_scores_)
        self.anomaly_masks_ = defect_masks(self.anomaly_maps_, self.labels_)
        self._output = self._image_scores(rgb, out, self.__dict__.get("pvalues_"))
        self.__dict__.pop("_pool", None)
        if self.novelty:
            self._pool = pool
            self.offset_ = -self.threshold_
        return self

    def _decide(self, scores):
        """``(threshold_, labels_)`` of the batch: Benjamini-Hochberg with ``fdr``, else the contamination rule."""
        if self.fdr is None:
            return threshold_scores(scores, self.contamination, self.threshold)
        return fdr_decision(scores, self.pvalues_, self.reference_scores_, self.fdr)

    def _scores(self, rgb, xyz, tables, bounds):
        n = rgb.n_images
        s2, s3 = fk.fused_patch_scores(tables[0], tables[1], self.fusion, bounds)
        grid = rgb.grid_size
        s2, s3 = s2.reshape((n,) + grid).astype(np.float32), s3.reshape((n,) + grid).astype(np.float32)
        a2, a3 = self._upsample(s2, rgb.input_size), self._upsample(s3, rgb.input_size)
        maps = a2 + a3
        scores = maps.reshape(n, -1).max(axis=1)
        joined = np.concatenate([salient_features(rgb, s2), salient_features(xyz, s3)], axis=1) / np.sqrt(2.0)
        return (s2, s3), a2, a3, maps, scores, joined

    def _upsample(self, patch_scores, input_size):
        if input_size is None or tuple(input_size) == patch_scores.shape[1:]:
            return patch_scores.copy()
        with torch.inference_mode():
            up = F.interpolate(torch.as_tensor(patch_scores)[:, None], size=tuple(input_size), mode="bilinear",
                               align_corners=True)
        return up[:, 0].numpy()

    def _image_scores(self, rgb, out, pvalues=None):
        _, _, _, maps, scores, joined = out
        labels = labels_above(scores, self.threshold_)
        return ImageScores(scores=scores, embeddings=None, salient_features=joined, sources=rgb.sources,
                           anomaly_maps=maps, input_size=rgb.input_size, original_sizes=rgb.original_sizes,
                           crop_mode=rgb.crop_mode,
                           anomaly_masks=defect_masks(maps, labels), threshold=self.threshold_, pvalues=pvalues)

    def fit_transform(self, X, y=None, references=None):
        """Fit on the batch and return its :class:`ImageScores` (for :class:`RsCINRescorer`).

        Parameters
        ----------
        X : MultimodalFeatures
            The batch.
        y : None
            Ignored.
        references : MultimodalFeatures, default=None
            Known-normal scorers; see :meth:`fit`.

        Returns
        -------
        scores : ImageScores
        """
        return self.fit(X, references=references)._output

    def fit_predict(self, X, y=None, references=None):
        """Fit on the batch and return its labels (1 normal, -1 anomalous).

        Parameters
        ----------
        X : MultimodalFeatures
            The batch.
        y : None
            Ignored.
        references : MultimodalFeatures, default=None
            Known-normal scorers; see :meth:`fit`.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        return self.fit(X, references=references).labels_

    def transform(self, X):
        """Image scores of new samples against the pool (``novelty=True`` only).

        Parameters
        ----------
        X : MultimodalFeatures
            New samples, made like the pool's.

        Returns
        -------
        scores : ImageScores
        """
        check_is_fitted(self, "device_")
        if not self.novelty:
            raise ValueError(
                "CrossModalDetector(novelty=False) scores only the batch it is fitted on: use fit_transform "
                "(or fit_predict), or novelty=True to score new samples with transform"
            )
        return self._score_new(X)

    def _anomaly_scores_new(self, X):
        return self._score_new(X).scores

    def _score_new(self, X):
        check_is_fitted(self, "offset_")
        rgb, xyz = _as_multimodal(X)
        for name, new, pool in (("rgb", rgb, self._pool[0]), ("xyz", xyz, self._pool[1])):
            if new.features.shape[1] != pool.shape[1] or new.features.shape[-1] != pool.shape[-1] \
                    or int(np.prod(new.grid_size)) != pool.shape[2]:
                raise ValueError(f"the new samples' {name} features were made otherwise than the pool's")
        device = resolve_device(self.device)
        tables = [fk.distance_tables(_flat(new), p, False, device) for new, p in zip((rgb, xyz), self._pool)]
        bounds = interval_bounds(len(self._pool[0]) + 1, self.topmin_min, self.topmin_max)
        return self._image_scores(rgb, self._scores(rgb, xyz, tables, bounds))

