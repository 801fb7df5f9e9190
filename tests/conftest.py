import os

import numpy as np
import pytest
import torch

from _helpers import SHARED

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
