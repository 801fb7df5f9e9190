"""ViT patch tokens of images (docs/algorithm.rst, "Features"): ``ViTPatchTransformer``."""

from __future__ import annotations

import numbers
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._backbones import build_backbone, resolve_backbone, resolve_pretrained
from ._batch import PatchTokens
from ._device import resolve_device
from ._progress import progress_bar
from ._validation import DEVICE, InstanceOf, Interval, Options, Satisfies, input_tags, int_sequence, validate_params
from ._validation import check_int_list, check_size
from .images import as_image_list, load_image
from .geometry import CROP_MODES, CroppedImageWarning, dropped_fraction, preprocess

__all__ = ["TURNS", "ViTPatchTransformer", "default_layers", "turn_input"]

_PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DTYPES = {"float16": (torch.float16, np.float16), "float32": (torch.float32, np.float32)}


def default_layers(n_blocks, rule="musc"):
    """The blocks of a layer rule: the last block of each of 4 equal stages (MuSc's), or all but the last.

    Parameters
    ----------
    n_blocks : int
        Number of transformer blocks.
    rule : {"musc", "inner"}, default="musc"
        "musc": the last block of each of 4 equal stages (MuSc's layer
        choice). "inner": the same without the network's last block (12
        blocks: 2, 5, 8; 24 blocks: 5, 11, 17): its tokens are shaped for
        the training objective rather than for local detail
        (``benchmarks/RESULTS.md``, "Accuracy where MuSc is weakest").

    Returns
    -------
    layers : tuple of int
        0-based block indices; fewer than 4 when the model has fewer blocks.

    Examples
    --------
    >>> default_layers(24), default_layers(12)
    ((5, 11, 17, 23), (2, 5, 8, 11))
    >>> default_layers(12, "inner"), default_layers(24, "inner")
    ((2, 5, 8), (5, 11, 17))
    """
    stages = tuple(sorted({-(-n_blocks * k // 4) - 1 for k in range(1, 5)}))
    if rule == "inner" and len(stages) > 1:
        return stages[:-1]
    return stages


# Turned copies of the model input (ViTPatchTransformer(turns=...)): name -> (quarter turns, flipped axis).
# Quarter turns are counter-clockwise (torch.rot90 on the (H, W) axes, PIL's ROTATE_90).
_TURNS = {"rot90": (1, None), "rot180": (2, None), "rot270": (3, None), "flip": (0, -1), "flip_v": (0, -2)}
TURNS = tuple(_TURNS)


def turn_input(x, turn):
    """A batch of model inputs (B, C, H, W) turned or mirrored as ``turn`` names.

    Parameters
    ----------
    x : tensor of shape (B, C, H, W)
    turn : {"rot90", "rot180", "rot270", "flip", "flip_v"}
        Quarter turns counter-clockwise ("rot90", "rot180", "rot270"),
        left-right mirror ("flip") or top-bottom mirror ("flip_v").

    Returns
    -------
    turned : tensor of shape (B, C, H, W), or (B, C, W, H) for a quarter turn

    Examples
    --------
    >>> import torch
    >>> turn_input(torch.arange(4.).reshape(1, 1, 2, 2), "rot90")[0, 0]
    tensor([[1., 3.],
            [0., 2.]])
    """
    quarters, axis = _TURNS[turn]
    return torch.flip(x, dims=(axis,)) if axis is not None else torch.rot90(x, quarters, dims=(-2, -1))


def _check_turns(turns, input_size):
    """``turns`` as a tuple of distinct names; quarter turns need a square input."""
    if turns is None:
        return ()
    turns = (turns,) if isinstance(turns, str) else tuple(turns)
    if len(set(turns)) != len(turns):
        raise ValueError(f"turns {turns!r} name the same copy twice")
    odd = [t for t in turns if _TURNS[t][0] % 2]
    if odd and input_size[0] != input_size[1]:
        raise ValueError(f"turns {odd!r} need a square model input to turn, got image_size "
                         f"{input_size[0]} x {input_size[1]}: use 'rot180', 'flip' or 'flip_v', or a square image_size")
    return turns


def _is_turns(value):
    value = (value,) if isinstance(value, str) else value
    return isinstance(value, (tuple, list)) and len(value) > 0 and all(v in _TURNS for v in value)


def _check_layers(layers, n_blocks):
    if layers is None or isinstance(layers, str):
        return default_layers(n_blocks, "musc" if layers is None else layers)
    out = []
    for layer in check_int_list(layers, "layers", minimum=None):  # negative: counted from the end
        if not -n_blocks <= layer < n_blocks:
            raise ValueError(f"layer {layer} is out of range for a backbone with {n_blocks} blocks")
        out.append(layer % n_blocks)
    if len(set(out)) != len(out):
        raise ValueError(f"layers {layers!r} name the same block twice")
    return tuple(out)


class ViTPatchTransformer(TransformerMixin, BaseEstimator):
    """Turn images into the patch tokens of a vision transformer.

    Each image is fitted to ``image_size`` as ``crop_mode`` says (bicubic),
    normalised with the backbone's mean and std and passed once through the
    ViT. The outputs of the selected blocks are kept, with
    all prefix tokens (class token, registers) removed, together with a
    unit-norm image embedding. CLIP tokens are the raw residual stream; timm
    (DINO, DINOv2) tokens get the backbone's final norm, as in MuSc.

    Parameters
    ----------
    backbone : str, default="open_clip:ViT-L-14-336"
        ``"open_clip:NAME"`` (CLIP ViTs: ViT-B-32, ViT-B-16, ViT-B-16-plus-240,
        ViT-L-14, ViT-L-14-336 and their ``-quickgelu`` variants) or
        ``"timm:NAME"`` (ViTs, e.g. ``vit_base_patch14_dinov2.lvd142m``,
        ``vit_base_patch16_224.dino``, ``vit_small_patch14_reg4_dinov2``). A
        bare name is looked up in open_clip, then timm. The default with
        plain GELU is the one that reproduced the paper's numbers.
    pretrained : str, path, bool or None, default="openai"
        Where the weights come from:

        - a pretrained tag, downloaded once into the library's cache: an
          open_clip tag (``"openai"``, ``"laion2b_s34b_b88k"``, ...) or a timm
          tag (the part after the dot, e.g. ``"lvd142m"``);
        - ``True`` or ``"default"``: the library's default weights (timm:
          the tag in ``backbone`` or timm's default; open_clip: its first tag);
        - a local file (``pathlib.Path``, or a str with a path separator or a
          ``.safetensors/.pt/.pth/.bin/.ckpt`` suffix): a state dict of the
          backbone (for open_clip the vision tower, with or without the
          ``visual.`` prefix, or a whole CLIP checkpoint). Half-precision
          files are fine; position embeddings are resized to ``image_size``;
        - ``None``: random weights (for tests).
    image_size : int or (int, int), default=518
        Model input size S or (height, width) in pixels. Position embeddings
        are resized to its patch grid. When it is not a multiple of the patch
        size, the last ``S % patch`` rows/columns are not seen by the model.
    crop_mode : {"auto", "center", "border", "squash"}, default="auto"
        How an image is fitted to the input (timm's names;
        :mod:`sklearn_musc.geometry`):

        - ``"center"``: resized to cover the input, the input cut from its
          centre (the paper's MVTec convention, kept by the ``paper-*``
          presets). An image of another aspect ratio loses its ends, and a
          :class:`~sklearn_musc.geometry.CroppedImageWarning` says how much;
        - ``"border"``: resized to fit inside the input and padded with the
          mean colour (letterbox);
        - ``"squash"``: resized to the input, aspect ratio not kept;
        - ``"auto"``: ``"center"`` for an image the crop cuts no more than
          the rounding of the resize (the input's aspect ratio, e.g. MVTec
          images at a square input: exactly the paper's fit), ``"squash"``
          for every other image, so that no part of an image goes unseen.
          Squash ranked defective images better than the letterbox on
          elongated images (benchmarks/RESULTS.md, "How images are fitted
          to the model input").
    layers : sequence of int, "inner" or None, default=None
        0-based indices of the blocks whose outputs are kept, in this order;
        negative values count from the end. None takes the last block of each
        of 4 equal stages (MuSc's rule; 24 blocks: 5, 11, 17, 23; 12 blocks:
        2, 5, 8, 11); "inner" the same without the last block (12 blocks: 2,
        5, 8), see ``sklearn_musc.features.default_layers``.
    backbone_kwargs : dict or None, default=None
        Architecture overrides: timm ``create_model`` arguments (e.g.
        ``depth``, ``embed_dim``, ``num_heads``), or for open_clip entries of
        the model's ``vision_cfg`` (e.g. ``width``, ``layers``, ``head_width``,
        ``patch_size``) plus ``embed_dim`` and ``quick_gelu``.
    device : str, default="auto"
        "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:<i>".
    precision : {"float32", "float16", "bfloat16"}, default="float32"
        Compute precision of the forward pass; the half precisions use CUDA
        autocast (float32 weights, half-precision matrix products) and need a
        CUDA device. (``MutualScoringDetector(matmul_precision=...)`` is the
        rounding of the scoring's products, a separate setting.)
    batch_size : int, default=8
        Images per forward pass. Images are decoded batch by batch (the next
        batch while the current one runs), never all at once.
    dtype : {"float16", "float32"}, default="float16"
        Storage type of the returned tokens (embeddings are always float32),
        as ``LNAMDTransformer(dtype=...)`` for the feature sets.
    progress : bool, default=True
        Show a progress bar with the time left over the images (once the
        forward has run for a second).
    random_state : int, RandomState instance or None, default=None
        Seeds the random initialisation when ``pretrained`` is None (ignored
        for pretrained weights), so that random-weight runs can be repeated;
        None draws from torch's global random state.
    turns : sequence of {"rot90", "rot180", "rot270", "flip", "flip_v"}, str or None, default=None
        Turned copies of every image, for parts that lie at any angle (a
        screw): each image's model input, after it is fitted to
        ``image_size``, is also turned by a quarter, a half or three
        quarters counter-clockwise, or mirrored left-right ("flip") or
        top-bottom ("flip_v"), and passed through the ViT; the tokens are
        returned in ``PatchTokens.turned``. :class:`MutualScoringDetector`
        then scores each patch against every *other* image and that image's
        copies (never the image's own copies), so a normal patch finds its
        match whatever way the other parts lie. Each copy is one more
        forward pass per image, and one more set of scorer patches, about
        twice the mutual-scoring products of the batch itself: ``T`` copies
        cost ``(1 + T)`` times the ViT and about ``(1 + 2T)`` times MSM.
        "rot90" and "rot270" need a square ``image_size``. New images scored
        against a novelty pool need no copies of their own (the pool's
        score them), though a Pipeline's ViT makes them. None: no copies.

    Attributes
    ----------
    model_ : torch.nn.Module
        The backbone (open_clip ``VisionTransformer`` or timm
        ``VisionTransformer``), in eval mode on ``device_``. Not pickled: it is
        rebuilt on first use after unpickling, from the tag or file (random
        weights are kept in the pickle).
    backbone_ : str
        Resolved backbone, ``"family:name"``.
    layers_ : tuple of int
        0-based block indices of the returned layers.
    n_blocks_ : int
        Number of transformer blocks of the backbone.
    input_size_ : (int, int)
        Model input (height, width).
    patch_size_ : (int, int)
        Patch (height, width).
    grid_size_ : (int, int)
        Patch grid (grid_h, grid_w) of the tokens.
    n_prefix_tokens_ : int
        Prefix tokens dropped (1 class token + registers).
    token_dim_ : int
        Token width C.
    embed_dim_ : int
        Width of the image embedding.
    mean_, std_ : ndarray of shape (3,)
        Normalisation used in preprocessing.
    device_ : torch.device
        The device used.
    turns_ : tuple of str
        The turned copies made of every image (empty without ``turns``).

    See Also
    --------
    LNAMDTransformer : aggregates the tokens this transformer returns.
    sklearn_musc.geometry.maps_to_original : puts maps at input size back on the original images.

    Notes
    -----
    Inputs: paths (str or pathlib.Path), PIL images or numpy arrays of shape
    (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (uint8, uint16, or float in
    [0, 1]), in a list (sizes may differ), or one (N, H, W, C) array.
    Grayscale is repeated to RGB, palettes expanded, alpha dropped (not
    composited), 16-bit divided by 65535 and the EXIF orientation applied.
    Unreadable files raise an error that names them.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_musc.features import ViTPatchTransformer
    >>> images = np.random.default_rng(0).integers(0, 256, (2, 60, 80, 3), dtype=np.uint8)
    >>> vit = ViTPatchTransformer(
    ...     backbone="timm:vit_small_patch14_dinov2", pretrained=None, image_size=56,
    ...     backbone_kwargs=dict(depth=4, embed_dim=64, num_heads=2), device="cpu")
    >>> out = vit.fit_transform(images)
    >>> out.tokens.shape  # (images, layers, grid_h, grid_w, dim)
    (2, 4, 4, 4, 64)
    >>> vit.layers_, out.original_sizes
    ((0, 1, 2, 3), ((60, 80), (60, 80)))

    Turned copies of every image, extra scorers for ``MutualScoringDetector``:

    >>> vit.set_params(turns=("rot90", "flip")).fit().transform(images).turned.shape
    (2, 2, 4, 4, 4, 64)
    """

    _parameter_constraints = {
        "backbone": [InstanceOf(str, "a str")],
        "pretrained": [None, "boolean", InstanceOf((str, os.PathLike), "a str or a path")],
        "image_size": [Satisfies(lambda v: check_size(v, "image_size"),
                                 "a positive int or a (height, width) pair of positive ints")],
        "crop_mode": [Options(*CROP_MODES)],
        "layers": [None, Options("inner"), int_sequence(minimum=None)],
        "backbone_kwargs": [None, InstanceOf(dict, "a dict")],
        "device": [DEVICE],
        "precision": [Options(*_PRECISIONS)],
        "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "dtype": [Options(*_DTYPES)],
        "progress": ["boolean"],
        "random_state": [None, "random_state"],
        "turns": [None, Satisfies(_is_turns, "a turn name or a non-empty sequence of them ("
                                  + ", ".join(repr(t) for t in TURNS) + ")")],
    }

    def __init__(
        self,
        *,
        backbone="open_clip:ViT-L-14-336",
        pretrained="openai",
        image_size=518,
        crop_mode="auto",
        layers=None,
        backbone_kwargs=None,
        device="auto",
        precision="float32",
        batch_size=8,
        dtype="float16",
        progress=True,
        random_state=None,
        turns=None,
    ):
        self.backbone = backbone
        self.pretrained = pretrained
        self.image_size = image_size
        self.crop_mode = crop_mode
        self.layers = layers
        self.backbone_kwargs = backbone_kwargs
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.dtype = dtype
        self.progress = progress
        self.random_state = random_state
        self.turns = turns

    def fit(self, X=None, y=None):
        """Validate the parameters and build the backbone; the images are not used.

        Parameters
        ----------
        X : ignored
            Accepted for pipeline compatibility; the transformation is per image.
        y : None
            Ignored.

        Returns
        -------
        self : object
        """
        validate_params(self)
        size = check_size(self.image_size, "image_size")
        turns = _check_turns(self.turns, size)
        device = resolve_device(self.device)
        if self.precision != "float32" and device.type != "cuda":
            raise ValueError(
                f"precision={self.precision!r} needs a CUDA device, got device {device}"
            )
        family, name = resolve_backbone(self.backbone)
        weights = resolve_pretrained(family, name, self.pretrained)

        self.__dict__.pop("_backbone", None)  # free a previous model before building the next
        with torch.random.fork_rng(devices=[]):  # seed the random init without touching the caller's RNG
            if weights[0] == "none" and self.random_state is not None:
                torch.manual_seed(int(check_random_state(self.random_state).randint(2**31 - 1)))
            backbone = build_backbone(family, name, weights, size, self.backbone_kwargs).to(device)
        self._backbone = backbone
        self._weights = weights
        self.backbone_ = f"{family}:{name}"
        self.device_ = device
        self.input_size_ = size
        self.n_blocks_ = backbone.num_blocks
        self.layers_ = _check_layers(self.layers, backbone.num_blocks)
        self.patch_size_ = backbone.patch_size
        self.grid_size_ = backbone.grid_size
        self.n_prefix_tokens_ = backbone.num_prefix_tokens
        self.token_dim_ = backbone.width
        self.mean_ = np.asarray(backbone.mean, dtype=np.float64)
        self.std_ = np.asarray(backbone.std, dtype=np.float64)
        self.embed_dim_ = backbone.embed_dim
        self.turns_ = turns
        return self

    # ------------------------------------------------------------------ model

    @property
    def model_(self):
        if "layers_" not in self.__dict__:
            raise AttributeError("model_ exists only after fit")
        return self._get_backbone().model

    def _get_backbone(self):
        backbone = self.__dict__.get("_backbone")
        if backbone is None:  # dropped by pickling: rebuild from the recorded source
            family, name = self.backbone_.split(":", 1)
            random_state = self.__dict__.pop("_random_weights", None)
            kind = self._weights[0]
            backbone = build_backbone(
                family, name, self._weights, self.input_size_, self.backbone_kwargs
            )
            if kind == "none":
                if random_state is None:
                    raise RuntimeError(
                        "the random weights of this model were not saved; fit it again"
                    )
                backbone.model.load_state_dict(random_state)
            self.device_ = resolve_device(self.device)
            self._backbone = backbone = backbone.to(self.device_)
        return backbone

    def __sklearn_tags__(self):
        return input_tags(super().__sklearn_tags__(), string=True)  # paths, PIL images, (N, H, W[, C]) arrays

    def _more_tags(self):  # scikit-learn < 1.6
        return {"X_types": ["3darray", "string"]}

    def __getstate__(self):
        state = dict(super().__getstate__())
        backbone = state.pop("_backbone", None)
        # Weights from a tag or file are reloaded on first use; random ones cannot be.
        if backbone is not None and self._weights[0] == "none":
            weights = backbone.model.state_dict()
            state["_random_weights"] = {k: v.detach().cpu() for k, v in weights.items()}
        return state

    def __setstate__(self, state):
        # pickled before crop_mode existed: it was fitted with the centre crop, and keeps it
        state = dict(state)
        state.setdefault("crop_mode", "center")
        state.setdefault("turns", None)  # and before turns existed: no copies
        if "layers_" in state:
            state.setdefault("turns_", ())
        super().__setstate__(state)

    # ------------------------------------------------------------------ transform

    def transform(self, X):
        """Compute the patch tokens and embeddings of images.

        Parameters
        ----------
        X : sequence of (str, pathlib.Path, PIL.Image.Image, ndarray) or ndarray
            The images: paths, PIL images or arrays (sizes may differ), or one
            (n_images, H, W, C) array.

        Returns
        -------
        tokens : PatchTokens
            ``tokens.tokens`` of shape (n_images, n_layers, grid_h, grid_w, dim)
            in ``dtype``; ``tokens.embeddings`` (n_images, embed_dim)
            float32, unit norm; plus ``input_size``, ``original_sizes``,
            ``layers``, ``sources`` and ``crop_mode``. With ``turns``,
            ``tokens.turned`` of shape (n_images, n_turns, n_layers, grid_h,
            grid_w, dim): the tokens of each turned copy of the model input,
            named in ``tokens.turns``.

        Warns
        -----
        CroppedImageWarning
            Once per call, when ``crop_mode="center"`` cuts pixels away
            (an image of another aspect ratio than the input's), with the
            share cut away.
        """
        check_is_fitted(self, "layers_")
        items, sources = as_image_list(X)
        backbone = self._get_backbone()
        n, (gh, gw) = len(items), self.grid_size_
        torch_dtype, np_dtype = _DTYPES[self.dtype]
        tokens = np.empty((n, len(self.layers_), gh, gw, self.token_dim_), dtype=np_dtype)
        turns = self.turns_
        turned = np.empty((n, len(turns)) + tokens.shape[1:], dtype=np_dtype) if turns else None
        embeddings = np.empty((n, self.embed_dim_), dtype=np.float32)
        original_sizes = [None] * n
        # The adapters return blocks in network order; put them in the order asked for.
        ordered = sorted(self.layers_)
        order = [ordered.index(layer) for layer in self.layers_]
        compute = _PRECISIONS[self.precision]
        autocast = compute != torch.float32
        starts = range(0, n, self.batch_size)

        def forward(x):
            with torch.autocast(self.device_.type, dtype=compute, enabled=autocast):
                layer_tokens, embedding = backbone(x, ordered)
            return torch.stack([layer_tokens[j] for j in order], dim=1), embedding

        def load(start):
            stop = min(n, start + self.batch_size)
            pixels, sizes = [], []
            for i in range(start, stop):
                image, size = load_image(items[i], sources[i])
                sizes.append(size)
                pixels.append(preprocess(image, self.input_size_, self.mean_, self.std_, self.crop_mode))
            return start, stop, torch.stack(pixels), sizes

        # A background thread decodes the next batch while the device runs this
        # one (PIL releases the GIL while decoding and resizing).
        with ThreadPoolExecutor(max_workers=1) as pool, torch.inference_mode(), \
                progress_bar(n, "ViT forward", self.progress, unit="image") as bar:
            pending = pool.submit(load, starts[0])
            for k in starts:
                start, stop, pixels, sizes = pending.result()
                if k + self.batch_size < n:
                    pending = pool.submit(load, k + self.batch_size)
                original_sizes[start:stop] = sizes
                x = pixels.to(self.device_, non_blocking=True)
                batch, embedding = forward(x)
                tokens[start:stop] = _to_storage(batch, torch_dtype, sources[start:stop])
                for t, turn in enumerate(turns):  # the copies: the same input turned, so no geometry changes
                    turned[start:stop, t] = _to_storage(forward(turn_input(x, turn))[0], torch_dtype,
                                                        sources[start:stop])
                embedding = F.normalize(embedding.float(), dim=-1)
                embeddings[start:stop] = embedding.cpu().numpy()
                bar.update(stop - start)
        _warn_if_cropped(original_sizes, self.input_size_, self.crop_mode, sources)
        return PatchTokens(
            tokens=tokens,
            embeddings=embeddings,
            input_size=self.input_size_,
            original_sizes=tuple(original_sizes),
            layers=self.layers_,
            sources=tuple(sources),
            backbone=self.backbone_,
            crop_mode=self.crop_mode,
            turned=turned,
            turns=turns or None,
        )


def _warn_if_cropped(sizes, input_size, crop_mode, sources):
    """One :class:`CroppedImageWarning` for a batch in which the fit cuts pixels away."""
    dropped = np.array([dropped_fraction(size, input_size, crop_mode) for size in sizes])
    if not dropped.any():
        return
    pixels = np.array([h * w for h, w in sizes], dtype=np.float64)
    worst = int(dropped.argmax())
    warnings.warn(
        f"crop_mode={crop_mode!r} cuts away {dropped @ pixels / pixels.sum():.1%} of the pixels of this batch "
        f"({int((dropped > 0).sum())} of {len(sizes)} images, up to {dropped[worst]:.1%} of {sources[worst]}): "
        "the model never sees them and a defect there cannot be found; crop_mode='auto' shows whole images",
        CroppedImageWarning, stacklevel=3)


def _to_storage(batch, dtype, sources):
    stored = batch.to(dtype)
    if not bool(torch.isfinite(stored).all()):
        if bool(torch.isfinite(batch).all()):
            raise ValueError("patch tokens overflow float16; use dtype='float32'")
        raise ValueError(
            f"the backbone produced NaN or infinite tokens for a batch starting with {sources[0]}"
            " (with precision='float16', try 'bfloat16' or 'float32')"
        )
    return stored.cpu().numpy()
