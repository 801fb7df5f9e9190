"""Features of rgb + point-cloud samples (docs/algorithm.rst, "2D + 3D fusion"): ``MultimodalTransformer``."""

from __future__ import annotations

import os

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.utils.validation import check_is_fitted

from ._batch import MultimodalFeatures
from ._validation import input_tags
from .images import read_image_size, read_rgb

__all__ = ["MultimodalTransformer"]


def _split_pairs(X):
    """``(rgb items, xyz items)`` of a sequence of (rgb, xyz) pairs."""
    if isinstance(X, (str, os.PathLike, np.ndarray)):
        raise ValueError("X must be a sequence of (rgb, xyz) pairs, e.g. list(zip(data.paths, data.xyz_paths))")
    pairs = list(X)
    if not pairs:
        raise ValueError("X holds no sample")
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"sample {i} of X is not an (rgb, xyz) pair: {type(pair).__name__}")
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _size(item, kind):
    if isinstance(item, (str, os.PathLike)):
        if not os.path.isfile(item):
            raise FileNotFoundError(f"{kind} file {str(item)!r} does not exist")
        if kind == "xyz":
            import tifffile

            with tifffile.TiffFile(str(item)) as tif:
                return tuple(tif.pages[0].shape[:2])
        return tuple(read_image_size(item))
    return tuple(np.shape(item)[:2])


def check_pairs(rgb, xyz):
    """Refuse a sample whose rgb image and point cloud differ in size (they are registered pixel by pixel)."""
    for i, (a, b) in enumerate(zip(rgb, xyz)):
        sa, sb = _size(a, "rgb"), _size(b, "xyz")
        if sa != sb:
            name = lambda v, k: repr(str(v)) if isinstance(v, (str, os.PathLike)) else f"{k} array {i}"  # noqa: E731
            raise ValueError(
                f"sample {i}: the rgb image {name(a, 'rgb')} is {sa[0]} x {sa[1]} but the point cloud "
                f"{name(b, 'xyz')} is {sb[0]} x {sb[1]}; they must be registered pixel by pixel"
            )


def _cloud_step(estimator):
    """The estimator itself, or a Pipeline's first step, when it can tell the object's pixels."""
    if hasattr(estimator, "steps"):
        estimator = estimator.steps[0][1]
    return estimator if hasattr(estimator, "foreground") else None


class MultimodalTransformer(TransformerMixin, BaseEstimator):
    """Apply one transformer to the rgb images and another to the point clouds of the same samples.

    The first step of a 2D + 3D pipeline: ``X`` is a sequence of
    ``(rgb, xyz)`` pairs (paths or arrays), the output a
    :class:`~sklearn_musc._batch.MultimodalFeatures` holding both
    modalities' features, which :class:`~sklearn_musc.CrossModalDetector`
    scores. Each transformer may be a :class:`~sklearn.pipeline.Pipeline`
    (e.g. ViT tokens then LNAMD); their parameters are nested
    (``rgb__vit__image_size``), so ``clone``, grid search and
    ``Pipeline(memory=...)`` (which caches this step's output) work as for
    one modality.

    Parameters
    ----------
    rgb : estimator
        Transformer of the rgb images, e.g.
        ``Pipeline([("vit", ViTPatchTransformer()), ("lnamd", LNAMDTransformer())])``.
    xyz : estimator
        Transformer of the point clouds, e.g.
        ``Pipeline([("pc", PointCloudPatchTransformer()), ("lnamd", LNAMDTransformer())])``.
    rgb_background : {"keep", "black"}, default="keep"
        "black" paints the rgb pixels outside the object black before the rgb
        transformer sees them, the object being what the point-cloud
        transformer keeps (its ``foreground``: off the background plane, in
        the largest cluster), as MuSc-V2's preprocessing does; needs ``xyz``
        to be a :class:`~sklearn_musc.PointCloudPatchTransformer` or a
        Pipeline starting with one.

    Attributes
    ----------
    rgb_, xyz_ : estimator
        The fitted clones.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_musc import MultimodalTransformer, PointCloudPatchTransformer, ViTPatchTransformer
    >>> yy, xx = np.mgrid[-1:1:28j, -1:1:28j]
    >>> cloud = np.stack([xx, yy, 3 - 0.5 * np.exp(-(xx**2 + yy**2) * 3)], axis=-1)
    >>> image = np.zeros((28, 28, 3), dtype=np.uint8)
    >>> union = MultimodalTransformer(
    ...     rgb=ViTPatchTransformer(backbone="timm:vit_small_patch14_dinov2", pretrained=None, image_size=28,
    ...                             backbone_kwargs=dict(depth=2, embed_dim=32, num_heads=2), device="cpu"),
    ...     xyz=PointCloudPatchTransformer(image_size=28, remove_background=False))
    >>> out = union.fit_transform([(image, cloud), (image, cloud)])
    >>> out.rgb.tokens.shape[2:4], out.xyz.tokens.shape[2:4]
    ((2, 2), (2, 2))
    """

    def __init__(self, *, rgb=None, xyz=None, rgb_background="keep"):
        self.rgb = rgb
        self.xyz = xyz
        self.rgb_background = rgb_background

    def _check(self):
        for name in ("rgb", "xyz"):
            est = getattr(self, name)
            if est is None or not hasattr(est, "transform"):
                raise ValueError(f"{name} must be a transformer (an estimator with transform), got {est!r}")
        if self.rgb_background not in ("keep", "black"):
            raise ValueError(f"rgb_background must be 'keep' or 'black', got {self.rgb_background!r}")
        if self.rgb_background == "black" and _cloud_step(self.xyz) is None:
            raise ValueError("rgb_background='black' needs xyz to be a PointCloudPatchTransformer (or a Pipeline "
                             "starting with one): its foreground says which pixels are the object")

    def _rgb_input(self, rgb, xyz, cloud):
        """The rgb items, with the background painted black when asked."""
        if self.rgb_background == "keep":
            return rgb
        out = []
        for i, (a, b) in enumerate(zip(rgb, xyz)):
            name = str(b) if isinstance(b, (str, os.PathLike)) else f"<xyz array {i}>"
            image = read_rgb(a, source=str(a) if isinstance(a, (str, os.PathLike)) else None)
            image[~cloud.foreground(b, name)] = 0
            out.append(image)
        return out

    def fit(self, X, y=None):
        """Fit a clone of each transformer on its modality.

        Parameters
        ----------
        X : sequence of (rgb, xyz) pairs
            The samples.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        self.fit_transform(X)
        return self

    def fit_transform(self, X, y=None):
        """Fit the transformers and return both modalities' features.

        Parameters
        ----------
        X : sequence of (rgb, xyz) pairs
            The samples.
        y : None
            Ignored.

        Returns
        -------
        features : MultimodalFeatures
        """
        self._check()
        rgb, xyz = _split_pairs(X)
        check_pairs(rgb, xyz)
        self.rgb_, self.xyz_ = clone(self.rgb), clone(self.xyz)
        xyz_features = self.xyz_.fit_transform(xyz)
        rgb = self._rgb_input(rgb, xyz, _cloud_step(self.xyz_))
        return MultimodalFeatures(rgb=self.rgb_.fit_transform(rgb), xyz=xyz_features)

    def transform(self, X):
        """Both modalities' features of samples.

        Parameters
        ----------
        X : sequence of (rgb, xyz) pairs
            The samples.

        Returns
        -------
        features : MultimodalFeatures
        """
        check_is_fitted(self, "rgb_")
        rgb, xyz = _split_pairs(X)
        check_pairs(rgb, xyz)
        rgb_items = self._rgb_input(rgb, xyz, _cloud_step(self.xyz_))
        return MultimodalFeatures(rgb=self.rgb_.transform(rgb_items), xyz=self.xyz_.transform(xyz))

    def __sklearn_tags__(self):
        return input_tags(super().__sklearn_tags__(), string=True)
