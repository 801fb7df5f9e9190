"""Helpers the test files share (``from _helpers import ...``); conftest.py holds only fixtures and hooks."""

import importlib.util
from pathlib import Path

import numpy as np
import torch

import _reference as ref

# ../shared beside the repository: real weights and MVTec AD images (never copied here).
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def make_tokens(rng, n=6, n_layers=2, h=5, w=5, dim=16, spread=0.5):
    """Tokens of a 'product': a shared per-position pattern plus per-image noise."""
    base = rng.normal(size=(1, n_layers, h, w, dim)) * 2.0 + 1.0
    return (base + spread * rng.normal(size=(n, n_layers, h, w, dim))).astype(np.float32)


def unit_features(rng, n=7, L=12, C=40):
    """Unit-norm patch features (n, L, C) of a 'product', float32."""
    Z = rng.normal(size=(1, L, C)) + 0.8 * rng.normal(size=(n, L, C))
    return (Z / np.linalg.norm(Z, axis=-1, keepdims=True)).astype(np.float32)


# significant bits of the product inputs, and whether ties round to even
ROUNDING = {"tf32": (11, False), "bfloat16": (8, True)}


def assert_similarity_table(table, Z, precision, device):
    """``table`` (a tensor from max_similarity_table) against the float64 reference on ``Z``."""
    assert table.device.type == device and table.dtype == torch.float32
    table = table.cpu().numpy()
    exact = ref.similarity_table(Z)
    off = ~np.isinf(exact)
    assert np.isneginf(table[~off]).all()
    if precision == "float32":
        assert np.abs(table[off] - exact[off]).max() < 1e-5
        return
    bits, ties_even = ROUNDING[precision]
    # |x.y - round(x).round(y)| <= 2u for unit vectors, u = 2**-(bits-1) even if truncated
    assert np.abs(table[off] - exact[off]).max() <= 2.0 ** (2 - bits) + 1e-5
    if device == "cuda" and precision == "tf32":
        return  # tensor cores may truncate rather than round to TF32: the bound above is the test
    rounded = ref.similarity_table(ref.round_significand(Z, bits, ties_even))
    assert np.abs(table[off] - rounded[off]).max() < 1e-5
    assert np.abs(table[off] - exact[off]).max() > 1e-6  # the inputs were rounded


def load_script(relative_path):
    """A script of the repository that is not part of the package (tools/, reproduction/), as a module."""
    path = Path(__file__).resolve().parents[1] / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cli(capsys, *argv):
    """``sklearn-musc ARGV`` in-process: (exit status, stdout, stderr)."""
    from sklearn_musc import cli

    rc = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err
