"""A point-cloud transformer with Point-MAE's architecture, and its checkpoint loader.

Point-MAE (Pang et al., ECCV 2022) encodes each point group with a small
PointNet (shared per-point layers, max-pooled), adds an embedding of the
group's centre before every block of a plain transformer, and normalises
the outputs with a final LayerNorm. Only the encoder is built here; its
pretrained weights are not shipped (load a local checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import torch
from timm.models.vision_transformer import Block
from torch import nn

# Prefixes that wrap the encoder's keys in the checkpoints of the Point-MAE
# family (pre-training: "MAE_encoder.", fine-tuning: "base_model.", DDP: "module.").
_PREFIXES = ("module.", "base_model.", "MAE_encoder.", "transformer_q.")


class _GroupEncoder(nn.Module):
    """Per-group PointNet: (B, G, M, 3) member offsets -> (B, G, width)."""

    def __init__(self, width):
        super().__init__()
        self.first_conv = nn.Sequential(nn.Conv1d(3, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
                                        nn.Conv1d(128, 256, 1))
        self.second_conv = nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                         nn.Conv1d(512, width, 1))

    def forward(self, groups):
        B, G, M, _ = groups.shape
        x = groups.reshape(B * G, M, 3).transpose(1, 2)
        local = self.first_conv(x)
        pooled = local.max(dim=2, keepdim=True)[0]
        x = self.second_conv(torch.cat([pooled.expand(-1, -1, M), local], dim=1))
        return x.max(dim=2)[0].reshape(B, G, -1)


class PointMAEEncoder(nn.Module):
    """Point-MAE's encoder: group tokens after the chosen blocks, through the final norm."""

    def __init__(self, width=384, depth=12, num_heads=6):
        super().__init__()
        self.width, self.depth = width, depth
        self.encoder = _GroupEncoder(width)
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, width))
        self.blocks = nn.ModuleList(
            Block(dim=width, num_heads=num_heads, mlp_ratio=4.0, qkv_bias=False) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, groups, centres, layers):
        x = self.encoder(groups)
        pos = self.pos_embed(centres)
        out = []
        for i, block in enumerate(self.blocks):
            x = block(x + pos)
            if i in layers:
                out.append(self.norm(x))
        return out


def load_point_mae_state(path, model):
    """Load a Point-MAE checkpoint's encoder weights into ``model``, strictly.

    Accepts a ``.pth``/``.pt`` file (a state dict, or a dict holding one under
    ``"base_model"``, ``"model"`` or ``"state_dict"``) or a ``.safetensors``
    file. Keys outside the encoder (decoder, classification head, class
    token) are ignored; a missing or mis-shaped encoder key is an error that
    names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Point-MAE checkpoint {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read the Point-MAE checkpoint {str(path)!r}: {exc}") from None
    for key in ("base_model", "model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    renamed = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        renamed[key.replace("blocks.blocks.", "blocks.")] = value
    own = model.state_dict()
    missing = [k for k in own if k not in renamed]
    if missing:
        raise ValueError(
            f"the checkpoint {str(path)!r} is not a Point-MAE encoder of this shape: {len(missing)} "
            f"weights are missing (first: {missing[0]!r})"
        )
    wrong = [k for k in own if tuple(renamed[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"the checkpoint {str(path)!r} does not fit the encoder: {k!r} has shape "
            f"{tuple(renamed[k].shape)}, expected {tuple(own[k].shape)}"
        )
    model.load_state_dict({k: renamed[k] for k in own})
    return model
