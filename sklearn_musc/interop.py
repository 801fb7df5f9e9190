"""What RsCIN needs from other libraries' scorers: salient features, anomalib's PatchCore.

:class:`~sklearn_musc.RsCINRescorer` needs, for each image, a score (higher
= more anomalous) and an embedding. Scores come as they are from any library
(anomalib's ``pred_score``, PyOD's ``decision_scores_``, numpy or torch).
The embedding MuSc-V2 recommends is the feature of each image's most
anomalous patch (the "salient" feature): :func:`salient_features` takes it
from any patch-level scorer's patch features and patch scores, and
:class:`PatchCoreCapture` records it, with the image score, while anomalib's
own PatchCore scores images (README, "RsCIN behind your own scorer").
"""

import numpy as np

from ._batch import ImageScores
from ._validation import as_float64

__all__ = ["PatchCoreCapture", "salient_features"]


def salient_features(patch_features, patch_scores):
    """Each image's feature vector at its highest-scoring patch, unit norm.

    The embedding RsCIN uses by default behind MuSc (MuSc-V2's
    anomaly-salient feature); behind another patch-level scorer it is that
    scorer's own view of what is wrong with the image.

    Parameters
    ----------
    patch_features : array-like of shape (n_images, n_patches, dim) or (n_images, h, w, dim)
        Patch features, channels last (for anomalib's ``(n, dim, h, w)``
        maps, ``features.permute(0, 2, 3, 1)``). Numpy or torch.
    patch_scores : array-like of shape (n_images, n_patches) or (n_images, h, w)
        The score of every patch, higher = more anomalous, in the same
        patch order. Ties go to the first patch.

    Returns
    -------
    features : ndarray of shape (n_images, dim), float32
        Unit-norm rows (a zero vector stays zero).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_musc.interop import salient_features
    >>> feats = np.arange(12.0).reshape(2, 3, 2)      # 2 images, 3 patches, dim 2
    >>> salient_features(feats, [[0.1, 0.9, 0.2], [0.5, 0.1, 0.0]]).round(3)
    array([[0.555, 0.832],
           [0.651, 0.759]], dtype=float32)
    """
    scores = as_float64(patch_scores, "patch_scores")
    if scores.ndim < 2:
        raise ValueError(f"patch_scores must have shape (n_images, n_patches) or (n_images, h, w), "
                         f"got shape {scores.shape}")
    n, n_patches = len(scores), int(np.prod(scores.shape[1:]))
    if not hasattr(patch_features, "shape"):  # a list
        patch_features = as_float64(patch_features, "patch_features")
    shape = tuple(patch_features.shape)
    if len(shape) < 3 or shape[0] != n or int(np.prod(shape[1:-1])) != n_patches:
        raise ValueError(f"patch_features of shape {shape} do not match patch_scores of shape {scores.shape}: "
                         "need (n_images, n_patches, dim) or (n_images, h, w, dim), channels last")
    scores = scores.reshape(n, n_patches)
    if not np.isfinite(scores).all():
        raise ValueError("patch_scores contain NaN or infinity")
    top = scores.argmax(axis=1)
    # index the top patches only: patch_features may be a large view (a feature set of a batch)
    if hasattr(patch_features, "detach"):
        import torch

        flat = patch_features.reshape(n, n_patches, shape[-1])
        vectors = flat[torch.arange(n), torch.as_tensor(top)].detach().float().cpu().numpy()
    else:
        grid = np.unravel_index(top, shape[1:-1])
        vectors = np.asarray(patch_features[(np.arange(n),) + grid], dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)


class PatchCoreCapture:
    """Record anomalib's PatchCore image scores and salient features as it scores.

    Used as a context manager around anomalib's own scoring (the torch
    model's forward, ``Engine.predict``, a loop over a DataLoader): for every
    image scored inside the ``with`` block it keeps PatchCore's image score
    (``pred_score``) and the embedding of the image's most anomalous patch,
    the patch PatchCore's score is computed from (the paper's
    ``m^{test,*}``), in scoring order. Nothing of PatchCore's computation
    changes: its method that turns patch distances into the image score is
    wrapped on this one model instance and restored on exit. The result goes
    straight into :class:`~sklearn_musc.RsCINRescorer`.

    Parameters
    ----------
    model : anomalib PatchcoreModel or Patchcore
        The torch model (``anomalib.models.image.patchcore.torch_model.
        PatchcoreModel``) or the Lightning module holding it (``.model``),
        with its memory bank filled.

    Attributes
    ----------
    scores : ndarray of shape (n_images,)
        The image scores, as ``pred_score`` (float64).
    salient_features : ndarray of shape (n_images, dim)
        Unit-norm PatchCore embeddings of each image's top patch (float32).

    Examples
    --------
    With ``patchcore`` an anomalib ``PatchcoreModel`` whose memory bank is
    filled (``examples/rscin_behind_your_scorer.py`` builds one)::

        from sklearn_musc import RsCINRescorer
        from sklearn_musc.interop import PatchCoreCapture

        with PatchCoreCapture(patchcore.eval()) as capture:
            out = patchcore(images)                 # anomalib's forward, unchanged
        rs = RsCINRescorer().fit(capture.image_scores())
        rs.anomaly_scores_                          # on the scale of out.pred_score
    """

    def __init__(self, model):
        inner = getattr(model, "model", model)  # the Lightning Patchcore holds the torch model
        if not (callable(getattr(inner, "compute_anomaly_score", None)) and hasattr(inner, "memory_bank")):
            raise TypeError(f"PatchCoreCapture needs anomalib's PatchcoreModel or Patchcore, got "
                            f"{type(model).__name__}")
        self.model = inner
        self._scores, self._features = [], []

    def __enter__(self):
        if "compute_anomaly_score" in vars(self.model):
            raise RuntimeError("this model is already being captured; nest no PatchCoreCapture on one model")
        original = self.model.compute_anomaly_score

        def record(patch_scores, locations, embedding, *args, **kwargs):
            score = original(patch_scores, locations, embedding, *args, **kwargs)
            self._scores.append(as_float64(score, "pred_score").reshape(-1))
            n = patch_scores.shape[0]
            self._features.append(salient_features(embedding.reshape(n, patch_scores.shape[1], -1), patch_scores))
            return score

        self.model.compute_anomaly_score = record
        return self

    def __exit__(self, *exc):
        del self.model.compute_anomaly_score  # the class's method again
        return False

    def _joined(self, parts, what):
        if not parts:
            raise RuntimeError(f"no {what} captured: score images with the model inside the `with` block "
                               "(in eval mode, with a filled memory bank)")
        return np.concatenate(parts)

    @property
    def scores(self):
        return self._joined(self._scores, "scores")

    @property
    def salient_features(self):
        return self._joined(self._features, "salient features")

    def image_scores(self):
        """The captured scores and salient features as the :class:`~sklearn_musc.ImageScores` RsCIN takes."""
        return ImageScores(scores=self.scores, salient_features=self.salient_features)
