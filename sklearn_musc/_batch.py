"""Small, picklable containers that flow between the pipeline steps.

Each step of a MuSc pipeline passes the next one a batch: the arrays it needs
plus the little metadata (model input size, original image sizes, image names)
that later steps use to put maps back on the images. They are plain
dataclasses of numpy arrays and tuples, so they pickle, hash (for
``Pipeline(memory=...)``) and print cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional, Tuple

import numpy as np

__all__ = ["PatchTokens", "FeatureSets", "ImageScores", "MultimodalFeatures", "salient_features"]

Size = Tuple[int, int]


def _take_optional(value, indices):
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(value[i] for i in indices)
    return value[indices]


class _BatchMixin:
    """Shared behaviour: length, subsetting by image, short repr."""

    # Fields indexed by image (first axis or tuple entry); the others are
    # per-batch metadata and are kept as they are by ``take``.
    _per_image: Tuple[str, ...] = ()

    def __len__(self):
        return self.n_images

    def take(self, indices):
        """Return the batch restricted (and reordered) to ``indices``."""
        indices = np.asarray(indices, dtype=np.intp)
        changes = {}
        for name in self._per_image:
            changes[name] = _take_optional(getattr(self, name), indices)
        return replace(self, **changes)

    def __repr__(self):
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                parts.append(f"{f.name}=<{value.dtype} array {tuple(value.shape)}>")
            elif isinstance(value, tuple) and len(value) > 4:
                parts.append(f"{f.name}=<{len(value)} entries>")
            else:
                parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


@dataclass(repr=False, eq=False)
class PatchTokens(_BatchMixin):
    """Patch tokens of a batch of images (output of ``ViTPatchTransformer``).

    Attributes
    ----------
    tokens : ndarray of shape (n_images, n_layers, grid_h, grid_w, dim)
        Patch tokens of the selected layers, prefix tokens removed. float16 or
        float32.
    embeddings : ndarray of shape (n_images, embed_dim) or None
        Unit-norm image embeddings (pooled / projected class token), used by
        ``RsCINRescorer``.
    input_size : (int, int) or None
        Model input size (height, width) in pixels; anomaly maps are upsampled
        to it.
    original_sizes : tuple of (int, int) or None
        Size (height, width) of each image before preprocessing.
    layers : tuple of int or None
        0-based block index of each layer in ``tokens``.
    sources : tuple of str or None
        A name for each image (its path, or ``"<array 3>"``).
    backbone : str or None
        The backbone that made the tokens (``"timm:NAME"``, ``"open_clip:NAME"``),
        so that features of different models are never scored together.
    crop_mode : str or None
        How the images were fitted to the input (``ViTPatchTransformer``'s
        ``crop_mode``); with ``input_size`` and ``original_sizes``, what
        :func:`~sklearn_musc.geometry.maps_to_original` needs.
    turned : ndarray of shape (n_images, n_turns, n_layers, grid_h, grid_w, dim) or None
        Tokens of each image's model input turned or mirrored as ``turns``
        says (``ViTPatchTransformer(turns=...)``): extra scorers of the other
        images, never part of the image's own maps. None without turns.
    turns : tuple of str or None
        The name of each copy in ``turned`` (``"rot90"``, ``"flip"``, ...).
    """

    tokens: np.ndarray
    embeddings: Optional[np.ndarray] = None
    input_size: Optional[Size] = None
    original_sizes: Optional[Tuple[Size, ...]] = None
    layers: Optional[Tuple[int, ...]] = None
    sources: Optional[Tuple[str, ...]] = None
    backbone: Optional[str] = None
    crop_mode: Optional[str] = None
    turned: Optional[np.ndarray] = None
    turns: Optional[Tuple[str, ...]] = None

    _per_image = ("tokens", "embeddings", "original_sizes", "sources", "turned")

    @property
    def n_images(self):
        return self.tokens.shape[0]

    @property
    def grid_size(self):
        return tuple(self.tokens.shape[2:4])


@dataclass(repr=False, eq=False)
class FeatureSets(_BatchMixin):
    """Aggregated, unit-norm patch features (output of ``LNAMDTransformer``).

    Attributes
    ----------
    features : ndarray of shape (n_images, n_sets, grid_h, grid_w, dim)
        One feature set per (layer, degree); each patch vector has unit L2 norm.
    set_index : tuple of (int, int)
        ``(layer, r)`` of each set: the layer position in the input (or the
        block index when known) and the aggregation degree (0 for the
        similarity-weighted variant, which merges all degrees).
    embeddings, input_size, original_sizes, sources, backbone, crop_mode
        Passed through from :class:`PatchTokens`.
    aggregation : (str, tuple of int) or None
        How the sets were made: ``LNAMDTransformer``'s ``aggregation`` and
        ``r_list``, e.g. ``("similarity", (1, 3, 5))``, so that features made
        otherwise are never scored together (the similarity-weighted sets do
        not name their degrees in ``set_index``); None for raw arrays.
    turned : ndarray of shape (n_images, n_turns, n_sets, grid_h, grid_w, dim) or None
        The feature sets of each image's turned copies (``PatchTokens.turned``
        aggregated like the images): :class:`MutualScoringDetector` scores
        every patch against each other image *and* that image's copies.
        None without turns.
    turns : tuple of str or None
        The name of each copy in ``turned``.
    """

    features: np.ndarray
    set_index: Tuple[Tuple[int, int], ...] = ()
    embeddings: Optional[np.ndarray] = None
    input_size: Optional[Size] = None
    original_sizes: Optional[Tuple[Size, ...]] = None
    sources: Optional[Tuple[str, ...]] = None
    backbone: Optional[str] = None
    aggregation: Optional[Tuple[str, Tuple[int, ...]]] = None
    crop_mode: Optional[str] = None
    turned: Optional[np.ndarray] = None
    turns: Optional[Tuple[str, ...]] = None

    _per_image = ("features", "embeddings", "original_sizes", "sources", "turned")

    @property
    def n_images(self):
        return self.features.shape[0]

    # Pickling keeps the memory layout of ``features``: LNAMD stores each set
    # contiguously (set-major), which a plain pickle or a joblib dump would turn
    # into C order. The layout is part of joblib.hash, so without this a batch
    # loaded from a Pipeline(memory=...) cache hashes differently from the same
    # batch freshly computed and the next step's cache misses. The turned
    # copies are kept the same way (their set axis is the third).
    _SET_AXIS = {"features": 1, "turned": 2}

    def __getstate__(self):
        state = dict(self.__dict__)
        for name, axis in self._SET_AXIS.items():
            array = state.get(name)
            if isinstance(array, np.ndarray) and array.ndim > axis and not array.flags.c_contiguous:
                moved = np.moveaxis(array, axis, 0)
                if moved.flags.c_contiguous:
                    state[name] = moved
                    state["_set_major" if name == "features" else f"_set_major_{name}"] = True
        return state

    def __setstate__(self, state):
        state = dict(state)
        for name, axis in self._SET_AXIS.items():
            if state.pop("_set_major" if name == "features" else f"_set_major_{name}", False):
                state[name] = np.moveaxis(state[name], 0, axis)
        self.__dict__.update(state)

    @property
    def grid_size(self):
        return tuple(self.features.shape[2:4])


@dataclass(repr=False, eq=False)
class ImageScores(_BatchMixin):
    """Image scores of a detector, with what a re-scorer needs.

    Attributes
    ----------
    scores : ndarray of shape (n_images,)
        Image anomaly scores, higher means more anomalous.
    embeddings : ndarray of shape (n_images, embed_dim) or None
        Unit-norm image embeddings (class token), when the backbone gave them.
    salient_features : ndarray of shape (n_images, dim) or None
        Each image's feature vector at its most anomalous patch (MuSc-V2's
        "anomaly-salient" feature), an embedding that needs no class token.
    sources : tuple of str or None
        A name for each image.
    anomaly_maps : ndarray of shape (n_images, H, W) or None
        The detector's anomaly maps (at the model input size when known).
    input_size : (int, int) or None
        Model input size; with ``original_sizes``, what
        :func:`~sklearn_musc.geometry.maps_to_original` needs.
    original_sizes : tuple of (int, int) or None
        Each image's size before preprocessing.
    crop_mode : str or None
        How the images were fitted to the model input (``PatchTokens.crop_mode``).
    anomaly_masks : ndarray of shape (n_images, H, W), bool, or None
        The detector's defect masks (empty for images labelled normal).
    threshold : float or None
        The detector's threshold on ``scores`` (``threshold_``): the images
        scoring above it are the detector's anomalies (``anomaly_masks`` are
        drawn for those).
    pvalues : ndarray of shape (n_images,) or None
        Conformal p-values against known-good parts, when the detector has
        them: new images against a novelty pool's calibration scores, or a
        batch against its references. :class:`RsCINRescorer` passes them on
        unchanged (README "Decisions you can trust").
    """

    scores: np.ndarray
    embeddings: Optional[np.ndarray] = None
    salient_features: Optional[np.ndarray] = None
    sources: Optional[Tuple[str, ...]] = None
    anomaly_maps: Optional[np.ndarray] = None
    input_size: Optional[Size] = None
    original_sizes: Optional[Tuple[Size, ...]] = None
    anomaly_masks: Optional[np.ndarray] = None
    threshold: Optional[float] = None
    pvalues: Optional[np.ndarray] = None
    crop_mode: Optional[str] = None

    _per_image = ("scores", "embeddings", "salient_features", "sources", "anomaly_maps", "original_sizes",
                  "anomaly_masks", "pvalues")

    @property
    def n_images(self):
        return self.scores.shape[0]


@dataclass(repr=False, eq=False)
class MultimodalFeatures(_BatchMixin):
    """The rgb and the 3D features of the same samples (output of ``MultimodalTransformer``).

    Attributes
    ----------
    rgb : PatchTokens or FeatureSets
        Features of the rgb images.
    xyz : PatchTokens or FeatureSets
        Features of the point clouds, sample for sample.
    """

    rgb: object
    xyz: object

    @property
    def n_images(self):
        return self.rgb.n_images

    def take(self, indices):
        """Return the batch restricted (and reordered) to ``indices``.

        Parameters
        ----------
        indices : array-like of int
            The samples to keep, in this order.

        Returns
        -------
        batch : MultimodalFeatures
        """
        return replace(self, rgb=self.rgb.take(indices), xyz=self.xyz.take(indices))

    def __repr__(self):
        return f"MultimodalFeatures(rgb={self.rgb!r}, xyz={self.xyz!r})"


def salient_features(X, patch_scores):
    """MuSc-V2's anomaly-salient feature: each image's unit vector at its top patch.

    Taken from ``X`` (:class:`FeatureSets`) at the second-to-last layer (the
    last when there is one) and its smallest degree; ``patch_scores``
    (n_images, grid_h, grid_w) says where the top patch is.
    """
    layers = sorted({layer for layer, _ in X.set_index})
    layer = layers[-2] if len(layers) > 1 else layers[-1]
    s = min((r, i) for i, (lay, r) in enumerate(X.set_index) if lay == layer)[1]
    n = X.n_images
    top = patch_scores.reshape(n, -1).argmax(axis=1)
    h, w = X.grid_size
    vectors = X.features[np.arange(n), s, top // w, top % w].astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)
