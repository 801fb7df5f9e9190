"""Local Neighbourhood Aggregation with Multiple Degrees (LNAMD); docs/algorithm.rst, "LNAMD"."""

import numbers

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._batch import FeatureSets
from ._device import resolve_device
from ._progress import progress_bar
from ._validation import (DEVICE, Interval, Options, Satisfies, as_patch_tokens, check_finite, check_int_list,
                          input_tags, int_sequence, validate_params)

__all__ = ["LNAMDTransformer"]

_LN_EPS = 1e-5


def _lnamd(x, r_list):
    """MuSc's LNAMD for one layer: x (B, h, w, C) -> (B, len(r_list), h, w, C).

    Everything stays channels-last, the layout of the tokens and of the
    output, so no step copies to (B, C, h, w) and back.
    """
    # One LayerNorm over the whole (h, w, C) tensor of each image, no affine:
    # a joint normalisation, so the order of the axes does not matter.
    x = F.layer_norm(x, x.shape[1:], eps=_LN_EPS)
    out = []
    for r in r_list:
        # count_include_pad=True as in the reference. It dilutes the border
        # patches only by a factor per position, which the L2 normalisation
        # below cancels.
        y = x if r == 1 else F.avg_pool2d(
            x.permute(0, 3, 1, 2), r, stride=1, padding=r // 2, count_include_pad=True
        ).permute(0, 2, 3, 1)
        out.append(F.normalize(y, dim=-1))
    return torch.stack(out, dim=1)


def _snamd(x, r_list):
    """MuSc-V2's similarity-weighted aggregation: x (B, h, w, C) -> (B, 1, h, w, C).

    Each neighbour q of p inside the image is weighted by exp(-||x_q - x_p||);
    the per-degree weighted means are averaged over ``r_list``. The windows of
    all degrees are nested, so every offset is visited once.
    """
    x = x.permute(0, 3, 1, 2)
    k = max(r_list) // 2
    padded = F.pad(x, (k, k, k, k))
    inside = F.pad(torch.ones_like(x[:, :1]), (k, k, k, k))
    h, w = x.shape[-2:]
    sums = [torch.zeros_like(x) for _ in r_list]
    weights = [torch.zeros_like(x[:, :1]) for _ in r_list]
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            nb = padded[:, :, k + dy : k + dy + h, k + dx : k + dx + w]
            valid = inside[:, :, k + dy : k + dy + h, k + dx : k + dx + w]
            wgt = torch.exp(-torch.linalg.vector_norm(nb - x, dim=1, keepdim=True)) * valid
            for i, r in enumerate(r_list):
                if max(abs(dy), abs(dx)) <= r // 2:
                    sums[i] += wgt * nb
                    weights[i] += wgt
    y = torch.stack([s / wt for s, wt in zip(sums, weights)]).mean(dim=0)
    return F.normalize(y, dim=1)[:, None].permute(0, 1, 3, 4, 2)


_TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}


def _is_storage_dtype(dtype):
    try:
        return np.dtype(dtype) in _TORCH_DTYPE
    except TypeError:
        return False


class LNAMDTransformer(TransformerMixin, BaseEstimator):
    """Aggregate ViT patch tokens over local neighbourhoods of several sizes.

    By default (``aggregation="similarity"``, MuSc-V2's SNAMD) each patch
    token of each layer is replaced by the mean of its neighbours within
    ``r x r`` windows, each neighbour weighted by ``exp(-distance)`` to the
    patch, averaged over the degrees ``r`` of ``r_list`` and L2-normalised:
    one feature set per layer. With ``aggregation="mean"`` (MuSc's LNAMD) the
    tokens are layer-normalised jointly over (channels, height, width),
    averaged over each patch's ``r x r`` neighbourhood for every degree
    (zero padding counted in the mean) and L2-normalised:
    ``n_layers * len(r_list)`` feature sets. Either is the input of
    :class:`MutualScoringDetector`. The transformation is per image and has
    no state: ``fit`` only validates.

    Parameters
    ----------
    r_list : sequence of int, default=(1, 3, 5)
        Aggregation degrees: odd neighbourhood sizes; 1 keeps each patch alone.
    aggregation : {"similarity", "mean"}, default="similarity"
        ``"similarity"`` is MuSc-V2's SNAMD: the neighbours are weighted by
        ``exp(-distance)`` to the centre patch, the degrees are averaged into
        a single set per layer and, as in the V2 reference, no joint LayerNorm
        is applied. ``"mean"`` is MuSc's LNAMD (the ``paper-*`` presets of
        :func:`~sklearn_musc.presets.make_musc_pipeline`). Measured on MVTec AD with
        DINOv2 ViT-S/14 (``benchmarks/RESULTS.md``, "Beyond the paper"),
        "similarity" gives the higher image AUROC, pixel AUROC and PRO, and
        with ``len(r_list)`` times fewer feature sets (3 by default) mutual
        scoring is as many times cheaper.
    device : str, default="auto"
        "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:<i>".
    batch_size : int, default=32
        Images aggregated at once on the device.
    dtype : {"float32", "float16"}, default="float32"
        Storage type of the feature sets on the host (computations are
        float32). "float16" halves their memory (``2 * N * n_sets * L * C``
        bytes instead of 4) and the traffic to and from a GPU; unit-norm
        features lose nothing to its range, and its 11-bit significand is
        TF32's. On MVTec AD bottle and screw it moves image scores by at
        most 3e-5 (``benchmarks/RESULTS.md``).
    progress : bool, default=True
        Show a progress bar with the time left over the images (once the
        aggregation has run for a second).

    Attributes
    ----------
    set_index_ : tuple of (int, int)
        ``(layer, r)`` of each output set (``r = 0`` for "similarity").
    n_layers_in_ : int
        Number of layers seen in ``fit``.
    dim_in_ : int
        Token width seen in ``fit``.
    device_ : torch.device
        The device used.

    See Also
    --------
    MutualScoringDetector : scores the feature sets this transformer makes.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_musc import LNAMDTransformer
    >>> tokens = np.random.default_rng(0).normal(size=(4, 2, 7, 7, 16))
    >>> feats = LNAMDTransformer(r_list=(1, 3), device="cpu").fit_transform(tokens)
    >>> feats.features.shape  # (images, one set per layer, grid_h, grid_w, dim)
    (4, 2, 7, 7, 16)
    >>> feats.set_index
    ((0, 0), (1, 0))
    >>> lnamd = LNAMDTransformer(r_list=(1, 3), aggregation="mean", device="cpu")
    >>> lnamd.fit_transform(tokens).set_index  # one set per (layer, degree)
    ((0, 1), (0, 3), (1, 1), (1, 3))
    """

    _parameter_constraints = {
        "r_list": [int_sequence(minimum=1, odd=True)],
        "aggregation": [Options("similarity", "mean")],
        "device": [DEVICE],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "dtype": [Satisfies(_is_storage_dtype, "'float32' or 'float16'")],
        "progress": ["boolean"],
    }

    def __init__(self, *, r_list=(1, 3, 5), aggregation="similarity", device="auto", batch_size=32, dtype="float32",
                 progress=True):
        self.r_list = r_list
        self.aggregation = aggregation
        self.device = device
        self.batch_size = batch_size
        self.dtype = dtype
        self.progress = progress

    def fit(self, X, y=None):
        """Validate the parameters and the shape of the tokens.

        Parameters
        ----------
        X : PatchTokens or array-like of shape (n_images, n_layers, grid_h, grid_w, dim)
            Patch tokens, prefix tokens removed.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        validate_params(self)
        X = as_patch_tokens(X)
        _, n_layers, h, w, dim = X.tokens.shape
        r_list = self.check_grid((h, w))
        self.device_ = resolve_device(self.device)
        self.n_layers_in_ = n_layers
        self.dim_in_ = dim
        layers = X.layers if X.layers is not None else tuple(range(n_layers))
        if self.aggregation == "mean":
            self.set_index_ = tuple((layer, r) for layer in layers for r in r_list)
        else:
            self.set_index_ = tuple((layer, 0) for layer in layers)
        self._r_list = r_list
        return self

    def check_grid(self, grid_size):
        """Check the parameters against a patch grid, before any token is computed.

        What :meth:`fit` checks of the parameters and the grid, without the
        tokens: a caller about to run the backbone (the command line) asks it
        first, so a window too large fails at once.

        Parameters
        ----------
        grid_size : (int, int)
            The patch grid (height, width) of the tokens to come
            (``ViTPatchTransformer.grid_size_``).

        Returns
        -------
        r_list : tuple of int
            ``r_list`` as checked.

        Raises
        ------
        ValueError
            If a parameter is invalid, or the largest window of ``r_list``
            is larger than the grid allows (``2 * min(grid_size) - 1``).
        """
        validate_params(self)
        r_list = check_int_list(self.r_list, "r_list", odd=True)  # as a tuple of ints
        h, w = (int(v) for v in grid_size)
        if max(r_list) > 2 * min(h, w) - 1:
            raise ValueError(f"r_list {r_list} has a window larger than the {h} x {w} patch grid allows "
                             f"(at most {2 * min(h, w) - 1})")
        return r_list

    def transform(self, X):
        """Aggregate the tokens into unit-norm feature sets.

        Parameters
        ----------
        X : PatchTokens or array-like of shape (n_images, n_layers, grid_h, grid_w, dim)
            Patch tokens with the layers and width seen in ``fit``.

        Returns
        -------
        features : FeatureSets
            ``features.features`` has shape (n_images, n_sets, grid_h, grid_w, dim).
            Tokens with turned copies (``ViTPatchTransformer(turns=...)``)
            give ``features.turned`` (n_images, n_turns, n_sets, grid_h,
            grid_w, dim): each copy aggregated as an image of its own.
        """
        check_is_fitted(self, "set_index_")
        X = as_patch_tokens(X)
        n, n_layers, h, w, dim = X.tokens.shape
        if (n_layers, dim) != (self.n_layers_in_, self.dim_in_):
            raise ValueError(
                f"tokens have {n_layers} layers of width {dim}; this transformer was "
                f"fitted on {self.n_layers_in_} layers of width {self.dim_in_}"
            )
        # Set-major in memory, (n, n_sets, ...) in shape: each feature set is
        # one contiguous block, which MSM scores (or moves to its device)
        # without gathering it first. Turned copies are aggregated as images
        # of their own, set-major too: (n_sets, n, n_turns, ...) in memory.
        dtype, n_sets = np.dtype(self.dtype), len(self.set_index_)
        out = np.empty((n_sets, n, h, w, dim), dtype=dtype).transpose(1, 0, 2, 3, 4)
        jobs, turned = [(X.tokens, out)], None
        if X.turned is not None:  # the copies, aggregated as n * n_turns more images
            n_turns = X.turned.shape[1] if X.turned.ndim == 6 else -1
            if X.turned.shape != (n, n_turns) + X.tokens.shape[1:] or len(X.turns or ()) != n_turns:
                raise ValueError(f"turned tokens must have shape (n_images, n_turns) + {X.tokens.shape[1:]} "
                                 f"with one name per copy in turns, got {X.turned.shape} and turns={X.turns!r}")
            flat = np.empty((n_sets, n * n_turns, h, w, dim), dtype=dtype).transpose(1, 0, 2, 3, 4)
            jobs.append((X.turned.reshape((n * n_turns,) + X.tokens.shape[1:]), flat))
            turned = flat.reshape((n, n_turns) + flat.shape[1:])  # a view: set-major, (n_sets, n, n_turns, ...)
        with torch.inference_mode(), progress_bar(sum(len(t) for t, _ in jobs), "LNAMD", self.progress,
                                                  unit="image") as bar:
            for tokens, sets in jobs:
                self._aggregate(tokens, sets, bar)
        return FeatureSets(
            features=out,
            set_index=self.set_index_,
            embeddings=X.embeddings,
            input_size=X.input_size,
            original_sizes=X.original_sizes,
            sources=X.sources,
            backbone=X.backbone,
            aggregation=(self.aggregation, tuple(self._r_list)),
            crop_mode=X.crop_mode,
            turned=turned,
            turns=X.turns if turned is not None else None,
        )

    def _aggregate(self, tokens, out, bar):
        """Fill ``out`` (n, n_sets, h, w, dim) with the sets of ``tokens`` (n, n_layers, h, w, dim)."""
        kernel = _lnamd if self.aggregation == "mean" else _snamd
        n, n_layers = tokens.shape[:2]
        per_layer = len(self.set_index_) // n_layers
        step = int(self.batch_size)
        for start in range(0, n, step):
            chunk = torch.as_tensor(tokens[start : start + step])
            chunk = chunk.to(self.device_, torch.float32)
            check_finite(chunk, "tokens")
            stop = start + chunk.shape[0]
            for layer in range(n_layers):
                sets = kernel(chunk[:, layer], self._r_list)
                sets = sets.to(_TORCH_DTYPE[out.dtype])  # on the device: half the traffic for float16
                for k in range(per_layer):  # straight into the contiguous block of each set
                    torch.from_numpy(out[start:stop, layer * per_layer + k]).copy_(sets[:, k])
            bar.update(stop - start)

    def __sklearn_tags__(self):
        return input_tags(super().__sklearn_tags__())

    def _more_tags(self):  # scikit-learn < 1.6
        return {"X_types": ["3darray"]}
