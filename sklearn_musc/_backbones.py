"""Small adapters over the vision transformers of open_clip and timm.

Both adapters expose the same thing: ``forward(x, layers)`` returns the patch
tokens of the given blocks as (B, grid_h, grid_w, C) tensors, prefix tokens
removed, and the image embedding (B, d), from a single pass through the
network; plus ``num_blocks``, ``patch_size``, ``grid_size``,
``num_prefix_tokens``, ``mean`` and ``std``.

* open_clip CLIP ViTs: tokens are the raw residual stream (no ``ln_post``),
  the embedding is what ``encode_image`` returns (``ln_post`` + ``proj`` of
  the class token).
* timm ViTs (DINO, DINOv2, with or without registers): the backbone's final
  norm is applied to each intermediate output, as the MuSc reference does;
  the embedding is the pooled pre-logits feature.
"""

from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

__all__ = ["build_backbone", "resolve_backbone", "resolve_pretrained", "read_state_dict"]

FAMILIES = ("open_clip", "timm")
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# open_clip builds a text tower we never use; make it as small as possible when
# no full CLIP checkpoint has to fit it.
_TINY_TEXT_CFG = dict(context_length=2, vocab_size=2, width=8, heads=1, layers=1)


# --------------------------------------------------------------------------- names


def _open_clip_names():
    import open_clip

    return open_clip.list_models()


def _timm_names():
    import timm

    return timm.list_models()


def _is_open_clip(name):
    return name.replace("/", "-") in _open_clip_names()


def _is_timm(name):
    return name.split(".")[0] in set(_timm_names())


def resolve_backbone(backbone):
    """Turn ``"open_clip:NAME"``, ``"timm:NAME"`` or a bare name into (family, name)."""
    if not isinstance(backbone, str) or not backbone:
        raise ValueError(f"backbone must be a non-empty str, got {backbone!r}")
    family, sep, name = backbone.partition(":")
    if sep:
        if family not in FAMILIES:
            raise ValueError(
                f"backbone {backbone!r} has an unknown prefix {family!r}; "
                "use 'open_clip:' or 'timm:'"
            )
        found = _is_open_clip(name) if family == "open_clip" else _is_timm(name)
        if not found:
            names = _open_clip_names() if family == "open_clip" else _timm_names()
            raise ValueError(_unknown_message(backbone, name, names))
    else:
        name = backbone
        in_clip, in_timm = _is_open_clip(name), _is_timm(name)
        if in_clip and in_timm:
            raise ValueError(
                f"backbone {name!r} is ambiguous: both open_clip and timm have it; "
                f"write 'open_clip:{name}' or 'timm:{name}'"
            )
        if not (in_clip or in_timm):
            names = [f"open_clip:{n}" for n in _open_clip_names()]
            names += [f"timm:{n}" for n in _timm_names()]
            raise ValueError(_unknown_message(backbone, name, names, prefixed=True))
        family = "open_clip" if in_clip else "timm"
    if family == "open_clip":
        name = name.replace("/", "-")  # open_clip accepts "ViT-L/14" for "ViT-L-14"
    return family, name


def _unknown_message(backbone, name, names, prefixed=False):
    if prefixed:
        by_name = {n.split(":", 1)[1]: n for n in names}
        close = difflib.get_close_matches(name, list(by_name), n=5, cutoff=0.5)
        matches = [by_name[m] for m in close]
    else:
        matches = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(matches)}" if matches else ""
    return f"unknown backbone {backbone!r}{hint}"


# --------------------------------------------------------------------------- weights


def resolve_pretrained(family, name, pretrained):
    """Classify ``pretrained`` as ("none", None), ("file", Path) or ("tag", tag).

    * None or False: random initialisation.
    * a pathlib.Path, or a str that contains a path separator, ends in a
      weights suffix or names an existing file: a local weights file.
    * True or "default": the library's default weights for ``name`` (timm:
      the tag in the name, else timm's default; open_clip: its first tag).
    * any other str: a pretrained tag (open_clip: e.g. "openai"; timm: the part
      after the dot in "vit_base_patch14_dinov2.lvd142m").
    """
    if pretrained is None or pretrained is False:
        return "none", None
    if isinstance(pretrained, os.PathLike) or (
        isinstance(pretrained, str)
        and (
            "/" in pretrained
            or os.sep in pretrained
            or pretrained.lower().endswith(_WEIGHT_SUFFIXES)
            or os.path.isfile(pretrained)
        )
    ):
        # absolute, so that a pickled model finds its weights from any working directory
        path = Path(pretrained).expanduser().resolve()
        _check_weights_path(path)
        return "file", path
    if pretrained is True or pretrained == "default":
        pretrained = True
    elif not isinstance(pretrained, str) or not pretrained:
        raise ValueError(
            f"pretrained must be None, True, 'default', a pretrained tag or a weights file path, "
            f"got {pretrained!r}"
        )
    hint = "use pretrained=None for random weights or a path to a local weights file"
    if family == "open_clip":
        import open_clip

        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained is True:
            if not tags:
                raise ValueError(f"open_clip has no pretrained weights for {name!r}; {hint}")
            return "tag", tags[0]
        if pretrained.lower() not in [t.lower() for t in tags]:
            raise ValueError(
                f"pretrained={pretrained!r} is not a pretrained tag of open_clip model {name!r}; "
                f"available: {', '.join(tags) or 'none'}; {hint}"
            )
        return "tag", pretrained
    import timm

    arch, _, name_tag = name.partition(".")
    available = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
    if pretrained is True:
        if not available or (name_tag and name_tag not in available):
            raise ValueError(f"timm has no pretrained weights for {name!r}; {hint}")
        return "tag", name_tag or True
    if name_tag and name_tag != pretrained:
        raise ValueError(
            f"backbone {name!r} already names the tag {name_tag!r} but pretrained={pretrained!r}; "
            "use pretrained=True (or 'default') to load the tag in the name"
        )
    if pretrained not in available:
        raise ValueError(
            f"pretrained={pretrained!r} is not a pretrained tag of timm model {arch!r}; available: "
            f"{', '.join(available) or 'none'}; use pretrained=True (or 'default') for timm's "
            f"default weights, or {hint}"
        )
    return "tag", pretrained


def _check_weights_path(path):
    if path.is_dir():
        raise IsADirectoryError(
            f"weights path {path} is a folder; give the weights file itself "
            "(.safetensors, .pt, .pth, .bin)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")


def _weights_format(path):
    """"safetensors", "torch" (zip or pickle) or None, from the first bytes of the file."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip archive / legacy pickle
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        return "safetensors"
    return None


def check_weights_file(path):
    """The format of a weights file ("safetensors" or "torch"); an error naming the file otherwise.

    FileNotFoundError or IsADirectoryError when it is not a file, ValueError
    when its first bytes are neither format's.
    """
    path = Path(path)
    _check_weights_path(path)
    kind = _weights_format(path)
    if kind is None:
        raise ValueError(
            f"weights file {path} is neither a safetensors file nor a PyTorch checkpoint "
            "(its first bytes are not either format's); give a state dict saved with "
            "safetensors or torch.save"
        )
    return kind


def read_state_dict(path):
    """Read a state dict (.safetensors, or a torch pickle of tensors) as float32 tensors."""
    path = Path(path)
    kind = check_weights_file(path)
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read weights file {path}: {exc}") from exc
    for key in ("state_dict", "model"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"weights file {path} does not hold a state dict of tensors")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    # Half-precision files load into the float32 model; resizing needs float32 too.
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


# --------------------------------------------------------------------------- adapters


class _ViTAdapter(nn.Module):
    """Common interface; subclasses set the attributes and implement ``forward``."""

    family = ""

    def __init__(self, model, mean, std):
        super().__init__()
        self.model = model
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def load_file(self, path):
        """Load a local weights file into the backbone; errors name the file."""
        state = read_state_dict(path)
        try:
            state = self._adapt_state_dict(state)
            self.model.load_state_dict(state, strict=True)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ValueError(
                f"weights file {path} does not match the {self.family} backbone: {exc}"
            ) from exc


class OpenCLIPViT(_ViTAdapter):
    """The vision tower of an open_clip CLIP ViT."""

    family = "open_clip"
    num_prefix_tokens = 1

    @property
    def num_blocks(self):
        return len(self.model.transformer.resblocks)

    @property
    def patch_size(self):
        return tuple(self.model.patch_size)

    @property
    def grid_size(self):
        return tuple(self.model.grid_size)

    @property
    def width(self):
        return self.model.transformer.width

    @property
    def embed_dim(self):
        proj = self.model.proj
        return int(proj.shape[1]) if proj is not None else self.width

    def _adapt_state_dict(self, state):
        from open_clip.model import resize_pos_embed

        if any(k.startswith("visual.") for k in state):  # a whole CLIP checkpoint
            state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        if "positional_embedding" in state:
            # open_clip's own resize: bicubic on the grid, class position kept.
            holder = {"visual.positional_embedding": state["positional_embedding"]}
            resize_pos_embed(holder, SimpleNamespace(visual=self.model))
            state["positional_embedding"] = holder["visual.positional_embedding"]
        return state

    def forward(self, x, layers):
        """x (B, 3, H, W); ``layers`` sorted block indices -> (tokens, embedding)."""
        out = self.model.forward_intermediates(x, indices=list(layers), output_fmt="NLC")
        b, (gh, gw) = x.shape[0], self.grid_size
        tokens = [t.reshape(b, gh, gw, t.shape[-1]) for t in out["image_intermediates"]]
        return tokens, out["image_features"]


class TimmViT(_ViTAdapter):
    """A timm ``VisionTransformer`` (DINO, DINOv2, registers, ...)."""

    family = "timm"

    @property
    def num_prefix_tokens(self):
        return int(self.model.num_prefix_tokens)

    @property
    def num_blocks(self):
        return len(self.model.blocks)

    @property
    def patch_size(self):
        return tuple(self.model.patch_embed.patch_size)

    @property
    def grid_size(self):
        return tuple(self.model.patch_embed.grid_size)

    @property
    def width(self):
        return self.model.embed_dim

    @property
    def embed_dim(self):
        return int(getattr(self.model, "head_hidden_size", self.model.num_features))

    def _adapt_state_dict(self, state):
        import timm.layers
        import timm.models.vision_transformer as vit

        # Converts foreign layouts (original DINOv2, ...) and resamples pos_embed
        # with timm's own resampler: another library in the process may have
        # replaced the one timm's loader calls (anomalib's ViT feature extractor
        # forces antialias=False on it, which moved these tokens by up to 6 %).
        patched = vit.resample_abs_pos_embed
        vit.resample_abs_pos_embed = timm.layers.resample_abs_pos_embed
        try:
            state = vit.checkpoint_filter_fn(state, self.model)
        finally:
            vit.resample_abs_pos_embed = patched
        if isinstance(self.model.head, nn.Identity):  # the classifier is never used
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        return state

    def forward(self, x, layers):
        """x (B, 3, H, W); ``layers`` sorted block indices -> (tokens, embedding)."""
        final, inter = self.model.forward_intermediates(
            x, indices=list(layers), norm=True, output_fmt="NLC"
        )
        b, (gh, gw) = x.shape[0], self.grid_size
        tokens = [t.reshape(b, gh, gw, t.shape[-1]) for t in inter]
        return tokens, self.model.forward_head(final, pre_logits=True)


def build_backbone(family, name, weights, image_size, kwargs=None):
    """Build the adapter at input size ``image_size`` (h, w), weights loaded.

    ``weights`` comes from :func:`resolve_pretrained`. ``kwargs`` override the
    architecture: timm ``create_model`` keyword arguments, or for open_clip
    entries of the model's ``vision_cfg`` (``embed_dim`` and ``quick_gelu``
    go to the top-level config).
    """
    kwargs = dict(kwargs or {})
    kind, value = weights
    if family == "open_clip":
        adapter = _build_open_clip(name, kind, value, image_size, kwargs)
    else:
        adapter = _build_timm(name, kind, value, image_size, kwargs)
    if min(adapter.grid_size) < 1:  # before loading: the file is not to blame
        raise ValueError(
            f"image_size {tuple(image_size)} is smaller than the patch size {adapter.patch_size}; "
            f"use at least {adapter.patch_size[0]} x {adapter.patch_size[1]}"
        )
    if kind == "file":
        adapter.load_file(value)
    return adapter.eval().requires_grad_(False)


def _build_open_clip(name, kind, value, image_size, kwargs):
    import open_clip
    from open_clip.transformer import VisionTransformer

    cfg = open_clip.get_model_config(name)
    vision_cfg = dict(cfg["vision_cfg"])
    if "timm_model_name" in vision_cfg or not isinstance(vision_cfg.get("layers"), int):
        raise ValueError(
            f"open_clip model {name!r} has no plain ViT image tower; supported are CLIP ViTs "
            "such as ViT-B-16 or ViT-L-14-336 (use 'timm:...' for timm towers)"
        )
    top = {k: kwargs.pop(k) for k in ("embed_dim", "quick_gelu") if k in kwargs}
    vision_cfg.update(kwargs)
    vision_cfg["image_size"] = tuple(image_size)
    try:
        if kind == "tag":
            with warnings.catch_warnings():
                # The paper's default pairs the openai weights with plain GELU on purpose.
                warnings.filterwarnings("ignore", message="QuickGELU mismatch")
                model = open_clip.create_model(name, pretrained=value, vision_cfg=vision_cfg, **top)
            visual = model.visual
            preprocess_cfg = getattr(visual, "preprocess_cfg", {})
            del model
        else:
            clip = open_clip.CLIP(
                embed_dim=top.get("embed_dim", cfg["embed_dim"]),
                vision_cfg=vision_cfg,
                text_cfg=_TINY_TEXT_CFG,
                quick_gelu=top.get("quick_gelu", cfg.get("quick_gelu", False)),
            )
            visual, preprocess_cfg = clip.visual, {}
    except TypeError as exc:
        raise ValueError(f"invalid backbone_kwargs for open_clip model {name!r}: {exc}") from exc
    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"open_clip model {name!r} has no plain ViT image tower")
    mean = preprocess_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
    std = preprocess_cfg.get("std", open_clip.OPENAI_DATASET_STD)
    return OpenCLIPViT(visual, mean, std)


def _build_timm(name, kind, value, image_size, kwargs):
    import timm
    from timm.models.vision_transformer import VisionTransformer

    if kind == "tag" and value is not True:
        name = f"{name.partition('.')[0]}.{value}"
    kwargs.setdefault("num_classes", 0)  # only features are used
    try:
        model = timm.create_model(
            name, pretrained=kind == "tag", img_size=tuple(image_size), **kwargs
        )
    except TypeError as exc:
        raise ValueError(
            f"cannot build timm model {name!r} at img_size={tuple(image_size)}: {exc}; check "
            "backbone_kwargs (only timm VisionTransformer models are supported)"
        ) from exc
    if not isinstance(model, VisionTransformer):
        raise ValueError(
            f"timm model {name!r} is a {type(model).__name__}; only timm VisionTransformer "
            "models (ViT, DINO, DINOv2, ...) are supported"
        )
    cfg = model.pretrained_cfg
    mean = cfg.get("mean", (0.485, 0.456, 0.406))  # ImageNet, timm's usual default
    std = cfg.get("std", (0.229, 0.224, 0.225))
    return TimmViT(model, mean, std)
