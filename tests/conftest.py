import os
from pathlib import Path

import numpy as np
import pytest
import torch

# ../shared beside the repository: real weights and MVTec AD images (never copied here).
SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# Two cores: keep torch from oversubscribing when pytest-xdist or BLAS threads compete.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if SHARED.is_dir():
        return
    skip = pytest.mark.skip(reason=f"{SHARED} is absent (real weights and images)")
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def make_tokens(rng, n=6, n_layers=2, h=5, w=5, dim=16, spread=0.5):
    """Tokens of a 'product': a shared per-position pattern plus per-image noise."""
    base = rng.normal(size=(1, n_layers, h, w, dim)) * 2.0 + 1.0
    return (base + spread * rng.normal(size=(n, n_layers, h, w, dim))).astype(np.float32)
