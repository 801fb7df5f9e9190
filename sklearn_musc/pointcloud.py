"""Patch features of organized point clouds (docs/algorithm.rst, "3D features"): ``PointCloudPatchTransformer``."""

from __future__ import annotations

import numbers
import os

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from . import _pointcloud_kernels as geo
from ._batch import PatchTokens
from ._device import resolve_device
from ._point_mae import PointMAEEncoder, load_point_mae_state
from ._validation import DEVICE, InstanceOf, Interval, Options, Satisfies, input_tags, int_sequence, validate_params
from ._validation import check_int_list, check_size
from .datasets import read_xyz

__all__ = ["PointCloudPatchTransformer"]

# RANSAC of the background plane on the border strips (BTF's preprocessing):
# border width in pixels, inlier distance, points per trial, trials.
_PLANE_BORDER, _PLANE_RANSAC_DISTANCE, _PLANE_SAMPLE, _PLANE_TRIALS = 10, 0.004, 50, 1000
_CLUSTER_MIN_POINTS = 30
_NORMAL_MAX_NN, _FEATURE_MAX_NN = 30, 100
_KNN = 256  # neighbour list of a group centre (IPG's candidates)
_IPG_START, _IPG_FLAT, _CURVATURE_K = 80, 0.01, 128


def _as_cloud_list(X):
    """``(items, sources)`` of a sequence of clouds (paths or (H, W, 3) arrays) or one (N, H, W, 3) array."""
    if isinstance(X, (str, os.PathLike)):
        raise ValueError("X must be a sequence of point clouds (paths or (H, W, 3) arrays), not a single path")
    if isinstance(X, np.ndarray):
        if X.ndim == 4:
            return list(X), [f"<array {i}>" for i in range(len(X))]
        raise ValueError(
            f"X must be a sequence of organized point clouds or one (n_samples, H, W, 3) array, got an array "
            f"of shape {X.shape}"
        )
    items = list(X)
    if not items:
        raise ValueError("X holds no point cloud")
    sources = [str(item) if isinstance(item, (str, os.PathLike)) else f"<array {i}>" for i, item in enumerate(items)]
    return items, sources


class PointCloudPatchTransformer(TransformerMixin, BaseEstimator):
    """Turn organized point clouds into patch tokens on an image-like grid.

    The 3D counterpart of :class:`~sklearn_musc.features.ViTPatchTransformer`:
    its output is a :class:`~sklearn_musc.PatchTokens` batch on the patch grid
    of the rgb images (``image_size // patch_size``), so that
    :class:`~sklearn_musc.LNAMDTransformer` and
    :class:`~sklearn_musc.MutualScoringDetector` score point clouds as they
    score images, and a patch of the cloud is the patch of the image at the
    same pixels (MVTec 3D-AD's xyz and rgb are registered pixel by pixel).

    Per cloud: the background plane is found by RANSAC on the points of the
    10-pixel border and every point within ``plane_distance`` of it removed;
    of the rest only the largest DBSCAN cluster (``cluster_eps``) is kept;
    the object is centred and scaled into the unit sphere; then

    - ``features="fpfh"`` (weight-free): one FPFH descriptor per point
      (open3d; normals within ``normal_radius``, histograms within
      ``feature_radius``, both in unit-sphere units), L2-normalised;
      with ``tokens="grid"`` averaged over ``smoothing`` x ``smoothing``
      pixel windows of the organized cloud, with ``tokens="groups"``
      averaged over IPG point groups;
    - ``features="point_mae"``: group tokens of a Point-MAE encoder
      (``checkpoint``), after the blocks in ``layers``.

    Group tokens are put back on the points (each point takes the
    inverse-squared-distance weighted mean of its 3 nearest group centres).
    Each patch token is then the mean of its pixels' vectors, a pixel with
    no object point counting as the vector ``(0, ..., 0, 1)``: the last
    channel is the patch's background fraction, so that empty patches match
    each other and a part missing from the silhouette shows.

    Parameters
    ----------
    features : {"fpfh", "point_mae"}, default="fpfh"
        The per-point or per-group descriptor.
    tokens : {"groups", "grid"}, default="groups"
        How FPFH descriptors are pooled before the patch grid: IPG groups
        around ``n_groups`` centres, or pixel windows of the organized cloud.
        ``"groups"`` is required by ``features="point_mae"``. Groups were
        measured better on MVTec 3D-AD cable_gland (3D-only image AUROC
        higher, pixel metrics equal; ``benchmarks/RESULTS.md``, "3D and 2D + 3D").
    checkpoint : str, path or None, default=None
        With ``features="point_mae"``: a local Point-MAE checkpoint (``.pth``
        or ``.safetensors``; the encoder's keys are taken, prefixes such as
        ``MAE_encoder.`` or ``base_model.`` removed). None builds random
        weights (tests only: random features detect nothing).
    image_size : int or (int, int), default=224
        The model input size of the matching rgb images; maps are upsampled
        to it. A cloud of another aspect is centre-cropped (the images' ``crop_mode="center"``,
        which 2D + 3D fusion needs of the ViT).
    patch_size : int, default=14
        Pixels per patch at ``image_size``: the grid is
        ``image_size // patch_size`` (16 x 16 by default, a ViT-S/14's at 224).
    remove_background : bool, default=True
        Remove the background plane and keep the largest cluster. False
        keeps every valid point.
    plane_distance : float, default=0.005
        Points closer than this to the background plane are background
        (the cloud's unit: metres for MVTec 3D-AD).
    cluster_eps : float or None, default=0.006
        DBSCAN radius of the largest-cluster step (the cloud's unit; at least
        30 points within it make a core point); None skips the step.
    normal_radius, feature_radius : float, default=0.05, 0.15
        FPFH search radii in unit-sphere units (at most 30 and 100 neighbours).
    smoothing : int, default=3
        Window of the ``tokens="grid"`` pooling, in pixels of the cloud.
    n_groups, group_size : int, default=1024, 128
        Point groups (``tokens="groups"``): farthest-point-sampled centres and
        IPG members per group (fewer when the object has fewer points).
    layers : sequence of int, default=(3, 7, 11)
        ``features="point_mae"``: 0-based blocks whose outputs are kept.
    device : str, default="auto"
        Device of the Point-MAE encoder.
    random_state : int, RandomState instance or None, default=None
        Seeds the random weights when ``checkpoint`` is None; the background
        plane's RANSAC is always seeded (0) so that a cloud always gives the
        same tokens.

    Attributes
    ----------
    input_size_ : (int, int)
        Model input (height, width).
    grid_size_ : (int, int)
        Patch grid of the tokens.
    layers_ : tuple of int
        Blocks of the returned layers ((0,) for FPFH).
    token_dim_ : int
        Token width: 34 for FPFH (33 + the background fraction), 385 for Point-MAE.
    backbone_ : str
        ``"pointcloud:fpfh-grid"``, ``"pointcloud:fpfh-groups"`` or ``"pointcloud:point_mae"``,
        so that features made otherwise are never scored together.
    model_ : torch.nn.Module or None
        The Point-MAE encoder in eval mode (None for FPFH).
    device_ : torch.device
        The device used.

    See Also
    --------
    sklearn_musc.datasets.load_mvtec3d : lists MVTec 3D-AD samples.
    CrossModalDetector : fuses the scores of the rgb and the 3D features.

    Notes
    -----
    Inputs: xyz TIFF paths (read with ``tifffile``) or arrays of shape
    (H, W, 3) where 0 marks a pixel with no point, in a list (sizes may
    differ), or one (N, H, W, 3) array. A cloud with NaN or infinite
    coordinates, with no valid point, or with nothing left after the
    background removal, is an error naming it.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_musc.pointcloud import PointCloudPatchTransformer
    >>> yy, xx = np.mgrid[-1:1:40j, -1:1:40j]
    >>> dome = np.stack([xx, yy, 3 - 0.5 * np.exp(-(xx**2 + yy**2) * 3)], axis=-1)
    >>> pc = PointCloudPatchTransformer(image_size=32, patch_size=8, remove_background=False, n_groups=64)
    >>> out = pc.fit_transform([dome, dome])
    >>> out.tokens.shape  # (samples, layers, grid_h, grid_w, 33 + 1)
    (2, 1, 4, 4, 34)
    """

    _parameter_constraints = {
        "features": [Options("fpfh", "point_mae")],
        "tokens": [Options("grid", "groups")],
        "checkpoint": [None, InstanceOf((str, os.PathLike), "a str or a path")],
        "image_size": [Satisfies(lambda v: check_size(v, "image_size"),
                                 "a positive int or a (height, width) pair of positive ints")],
        "patch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "remove_background": ["boolean"],
        "plane_distance": [Interval(numbers.Real, 0, None, closed="neither")],
        "cluster_eps": [None, Interval(numbers.Real, 0, None, closed="neither")],
        "normal_radius": [Interval(numbers.Real, 0, None, closed="neither")],
        "feature_radius": [Interval(numbers.Real, 0, None, closed="neither")],
        "smoothing": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_groups": [Interval(numbers.Integral, 1, None, closed="left")],
        "group_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "layers": [int_sequence(minimum=0)],
        "device": [DEVICE],
        "random_state": [None, "random_state"],
    }

    def __init__(
        self,
        *,
        features="fpfh",
        tokens="groups",
        checkpoint=None,
        image_size=224,
        patch_size=14,
        remove_background=True,
        plane_distance=0.005,
        cluster_eps=0.006,
        normal_radius=0.05,
        feature_radius=0.15,
        smoothing=3,
        n_groups=1024,
        group_size=128,
        layers=(3, 7, 11),
        device="auto",
        random_state=None,
    ):
        self.features = features
        self.tokens = tokens
        self.checkpoint = checkpoint
        self.image_size = image_size
        self.patch_size = patch_size
        self.remove_background = remove_background
        self.plane_distance = plane_distance
        self.cluster_eps = cluster_eps
        self.normal_radius = normal_radius
        self.feature_radius = feature_radius
        self.smoothing = smoothing
        self.n_groups = n_groups
        self.group_size = group_size
        self.layers = layers
        self.device = device
        self.random_state = random_state

    def fit(self, X=None, y=None):
        """Validate the parameters and build the encoder; the clouds are not used.

        Parameters
        ----------
        X : ignored
            Accepted for pipeline compatibility; the transformation is per cloud.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        validate_params(self)
        size = check_size(self.image_size, "image_size")
        grid = (size[0] // self.patch_size, size[1] // self.patch_size)
        if min(grid) < 1:
            raise ValueError(f"patch_size={self.patch_size} is larger than image_size={self.image_size}")
        if self.features == "point_mae" and self.tokens != "groups":
            raise ValueError("features='point_mae' makes group tokens: use tokens='groups'")
        if self.features == "fpfh" and self.checkpoint is not None:
            raise ValueError("checkpoint is for features='point_mae'; FPFH has no weights")
        self.input_size_, self.grid_size_ = size, grid
        self.device_ = resolve_device(self.device)
        self.__dict__.pop("_encoder", None)
        if self.features == "point_mae":
            layers = check_int_list(self.layers, "layers", minimum=0)
            encoder = PointMAEEncoder()
            if max(layers) >= encoder.depth:
                raise ValueError(f"layers {tuple(layers)} name a block beyond the encoder's {encoder.depth}")
            self.layers_ = tuple(layers)
            self._encoder = self._build_encoder()
            self.token_dim_ = encoder.width + 1
            self.backbone_ = "pointcloud:point_mae"
        else:
            self.layers_ = (0,)
            self.token_dim_ = 33 + 1
            self.backbone_ = f"pointcloud:fpfh-{self.tokens}"
        return self

    # ------------------------------------------------------------------ encoder

    def _build_encoder(self, random_weights=None):
        with torch.random.fork_rng(devices=[]):  # seed the random init without touching the caller's RNG
            if self.checkpoint is None and self.random_state is not None:
                torch.manual_seed(int(check_random_state(self.random_state).randint(2**31 - 1)))
            encoder = PointMAEEncoder()
        if self.checkpoint is not None:
            load_point_mae_state(self.checkpoint, encoder)
        elif random_weights is not None:
            encoder.load_state_dict(random_weights)
        # eval mode: BatchNorm uses its running statistics and nothing is random,
        # so a cloud's tokens do not depend on the batch or the run
        return encoder.eval().to(self.device_)

    @property
    def model_(self):
        if "layers_" not in self.__dict__:
            raise AttributeError("model_ exists only after fit")
        return self._get_encoder()

    def _get_encoder(self):
        if self.features != "point_mae":
            return None
        encoder = self.__dict__.get("_encoder")
        if encoder is None:  # dropped by pickling: rebuild
            self.device_ = resolve_device(self.device)
            self._encoder = encoder = self._build_encoder(self.__dict__.pop("_random_weights", None))
        return encoder

    def __getstate__(self):
        state = dict(super().__getstate__())
        encoder = state.pop("_encoder", None)
        if encoder is not None and self.checkpoint is None:  # random weights cannot be rebuilt
            state["_random_weights"] = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
        return state

    def __sklearn_tags__(self):
        return input_tags(super().__sklearn_tags__(), string=True)

    def _more_tags(self):  # scikit-learn < 1.6
        return {"X_types": ["3darray", "string"]}

    # ------------------------------------------------------------------ transform

    def transform(self, X):
        """Compute the patch tokens of point clouds.

        Parameters
        ----------
        X : sequence of (str, pathlib.Path, ndarray) or ndarray
            xyz TIFF paths or (H, W, 3) arrays (0 = no point), or one
            (n_samples, H, W, 3) array.

        Returns
        -------
        tokens : PatchTokens
            ``tokens.tokens`` of shape (n_samples, n_layers, grid_h, grid_w,
            ``token_dim_``), float32, plus ``input_size``, ``original_sizes``
            (each cloud's (H, W)), ``layers``, ``sources`` and ``backbone``;
            no image embeddings (RsCIN uses the salient features).
        """
        check_is_fitted(self, "layers_")
        items, sources = _as_cloud_list(X)
        out = np.empty((len(items), len(self.layers_)) + self.grid_size_ + (self.token_dim_,), dtype=np.float32)
        sizes = []
        for i, (item, source) in enumerate(zip(items, sources)):
            xyz = read_xyz(item, source)
            sizes.append(xyz.shape[:2])
            out[i] = self._cloud_tokens(xyz, source)
        return PatchTokens(tokens=out, embeddings=None, input_size=self.input_size_, original_sizes=tuple(sizes),
                           layers=self.layers_, sources=tuple(sources), backbone=self.backbone_,
                           crop_mode="center")

    def foreground(self, xyz, source=None):
        """The object's pixels of one cloud: valid, off the background plane, in the largest cluster.

        Parameters
        ----------
        xyz : str, path or ndarray of shape (H, W, 3)
            The organized cloud.
        source : str, optional
            Its name in error messages.

        Returns
        -------
        mask : ndarray of shape (H, W), bool
        """
        check_is_fitted(self, "layers_")
        xyz = read_xyz(xyz, source)
        return self._foreground(xyz, source or "the point cloud")

    def _foreground(self, xyz, source):
        valid = (xyz != 0).any(axis=-1)
        mask = valid
        if self.remove_background:
            mask = geo.remove_plane(xyz, valid, border=_PLANE_BORDER, ransac_distance=_PLANE_RANSAC_DISTANCE,
                                    cut_distance=self.plane_distance, n_sample=_PLANE_SAMPLE,
                                    n_iter=_PLANE_TRIALS, random_state=0)
            if self.cluster_eps is not None and mask.any():
                rows, cols = np.nonzero(mask)
                keep = geo.largest_cluster(xyz[rows, cols].astype(np.float64), self.cluster_eps, _CLUSTER_MIN_POINTS)
                mask = np.zeros_like(mask)
                mask[rows[keep], cols[keep]] = True
        n_min = 4 if self.features == "fpfh" else 3
        if mask.sum() < n_min:
            raise ValueError(
                f"point cloud {source} has {int(mask.sum())} object points left after the background removal "
                f"(of {int(valid.sum())} valid ones); too few to describe (remove_background=False keeps all)"
            )
        return mask

    def _cloud_tokens(self, xyz, source):
        mask = self._foreground(xyz, source)
        rows, cols = np.nonzero(mask)
        raw = xyz[rows, cols].astype(np.float64)
        points, centre, scale = geo.unit_sphere(raw)
        aspect = self.input_size_[0] / self.input_size_[1]
        if self.features == "fpfh":
            camera = -centre / scale  # the sensor sits at the origin of the raw coordinates
            desc = geo.unit_rows(geo.fpfh(points, camera, self.normal_radius, _NORMAL_MAX_NN,
                                          self.feature_radius, _FEATURE_MAX_NN))
            if self.tokens == "grid":
                dense = np.zeros(mask.shape + (desc.shape[1],))
                dense[rows, cols] = desc
                desc = geo.smooth_on_mask(dense, mask, self.smoothing)[rows, cols]
            else:
                centres, groups = self._groups(points)
                desc = geo.interpolate_to_points(points, points[centres], desc[groups].mean(axis=1))
            return geo.pool_to_grid(rows, cols, desc[:, None, :], mask.shape, self.grid_size_, aspect).transpose(
                2, 0, 1, 3)
        centres, groups = self._groups(points)
        neighbourhoods = points[groups] - points[centres][:, None, :]
        encoder = self._get_encoder()
        with torch.inference_mode():
            g = torch.as_tensor(neighbourhoods[None], dtype=torch.float32, device=self.device_)
            c = torch.as_tensor(points[centres][None], dtype=torch.float32, device=self.device_)
            outs = encoder(g, c, self.layers_)
        group_tokens = np.stack([torch.nn.functional.normalize(o[0].float(), dim=-1).cpu().numpy() for o in outs],
                                axis=1)                                  # (G, L, C)
        # each block's tokens in the order asked for
        order = [sorted(self.layers_).index(layer) for layer in self.layers_]
        group_tokens = group_tokens[:, order]
        per_point = geo.interpolate_to_points(points, points[centres], group_tokens)
        return geo.pool_to_grid(rows, cols, per_point, mask.shape, self.grid_size_, aspect).transpose(2, 0, 1, 3)

    def _groups(self, points):
        """``(centres, groups)``: FPS centre indices and their IPG member indices."""
        from scipy.spatial import cKDTree

        centres = geo.farthest_point_sampling(points, self.n_groups)
        k = min(_KNN, len(points))
        size = min(self.group_size, k)
        knn = cKDTree(points).query(points[centres], k=k)[1].reshape(len(centres), k)
        groups, _ = geo.ipg_groups(points, knn, size, min(_IPG_START, size), _IPG_FLAT, min(_CURVATURE_K, k))
        return centres, groups
