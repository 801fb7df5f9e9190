"""Before a long run on a CPU: its time estimated from the arithmetic and the matmul rate measured now.

The two costs that grow are the ViT forward (``depth * (24 T C^2 + 4 T^2 C)``
floating-point operations per image of ``T`` tokens of width ``C``) and
mutual scoring (``2 L^2 C`` per pair of images per feature set, ``L``
patches; each unordered pair of a subset once, and each image against each
reference). Both run as matrix products, so their time is close to the
operations over the float32 matrix-multiply rate of the machine, which is
measured in a fraction of a second before the run. The announcement names
faster settings with their own estimates and changes nothing of the run.
"""

import math
import time

import torch

from .._msm_batch import batch_pairs

LONG = 60.0  # seconds: a run estimated longer than this on a CPU is announced
SMALL_VIT = ("timm:vit_small_patch14_dinov2", 12, 384, 14)  # backbone, depth, width, patch


def matmul_rate(size=768, repeats=3):
    """float32 matrix-multiply FLOP/s of this process now (the best of ``repeats``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def vit_flops(n_images, depth, width, tokens):
    """Operations of the ViT forward over ``n_images`` of ``tokens`` tokens."""
    return n_images * depth * (24 * tokens * width**2 + 4 * tokens**2 * width)


def msm_flops(n_images, n_refs, n_sets, patches, width, max_subset_size=None, n_turns=0):
    """Operations of mutual scoring: every pair of a subset and every image against every reference
    (and against every other image's ``n_turns`` turned copies)."""
    n_subsets = 1 if not max_subset_size else math.ceil(n_images / max_subset_size)
    sizes = [len(range(i, n_images, n_subsets)) for i in range(n_subsets)]  # as even as the split
    pairs = sum(batch_pairs(m, n_refs, n_sets, n_turns) for m in sizes)
    return pairs * 2 * patches**2 * width


def estimate(n_images, n_refs, n_sets, *, depth, width, grid, prefix, max_subset_size=None, rate, n_turns=0):
    """``(vit seconds, mutual scoring seconds)`` of a run at ``rate`` FLOP/s (``n_turns``: copies per image)."""
    patches = grid[0] * grid[1]
    vit = vit_flops((n_images + n_refs) * (1 + n_turns), depth, width, patches + prefix) / rate
    msm = msm_flops(n_images, n_refs, n_sets, patches, width, max_subset_size, n_turns) / rate
    return vit, msm


def _duration(seconds):
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _n_sets(vit, lnamd):
    return len(vit.layers_) * (1 if lnamd.aggregation == "similarity" else len(lnamd.r_list))


def announce(vit, lnamd, n_images, n_refs, max_subset_size, stage, rate=None):
    """Print the estimate of a CPU run (``stage``: the line printer) when it is long; returns the seconds or None."""
    if vit.device_.type != "cpu":
        return None
    n_sets = _n_sets(vit, lnamd)
    rate = rate or matmul_rate()
    common = dict(prefix=vit.n_prefix_tokens_, max_subset_size=max_subset_size, rate=rate, n_turns=len(vit.turns_))
    a, b = estimate(n_images, n_refs, n_sets, depth=vit.n_blocks_, width=vit.token_dim_, grid=vit.grid_size_,
                    **common)
    if a + b < LONG:
        return a + b
    faster = []
    height, width = vit.input_size_
    if min(height, width) > 224:
        grid = (224 // vit.patch_size_[0], 224 // vit.patch_size_[1])
        faster.append(("--image-size 224", estimate(n_images, n_refs, n_sets, depth=vit.n_blocks_,
                                                    width=vit.token_dim_, grid=grid, **common)))
    name, depth, small_width, patch = SMALL_VIT
    if vit.backbone_ != name and vit.token_dim_ > small_width:
        size = min(height, width, 224)
        grid = (size // patch, size // patch)
        faster.append((f"--backbone {name} --image-size {size}",
                       estimate(n_images, n_refs, n_sets, depth=depth, width=small_width, grid=grid,
                                prefix=1, max_subset_size=max_subset_size, rate=rate, n_turns=len(vit.turns_))))
    if n_images > 100 and (max_subset_size is None or max_subset_size > 50):
        faster.append(("--max-subset-size 50", estimate(n_images, n_refs, n_sets, depth=vit.n_blocks_,
                                                        width=vit.token_dim_, grid=vit.grid_size_,
                                                        prefix=vit.n_prefix_tokens_, max_subset_size=50,
                                                        rate=rate, n_turns=len(vit.turns_))))
    line = (f"estimated time on the CPU: about {_duration(a + b)} (ViT forward {_duration(a)}, mutual scoring "
            f"{_duration(b)}, at the {rate / 1e9:.0f} GFLOP/s float32 matmul rate measured now)")
    if faster:
        line += "; faster, if acceptable: " + ", ".join(f"{opt} (about {_duration(sum(t))})" for opt, t in faster)
    stage(line)
    return a + b


def announce_new(vit, n_sets, n_new, n_pool, stage, rate=None):
    """``score --model``: the estimate of scoring ``n_new`` images against a pool of ``n_pool`` on a CPU.

    Each new image needs the ViT forward and one product with every pool
    image per feature set (new images never score each other); printed when
    long, with the faster setting it can take (fewer images per call does
    not help: the cost is per image). Returns the seconds or None.
    """
    if vit.device_.type != "cpu":
        return None
    rate = rate or matmul_rate()
    patches = vit.grid_size_[0] * vit.grid_size_[1]
    n_turns = len(vit.turns_)  # the new images' copies are made too; the pool's copies score them
    a = vit_flops(n_new * (1 + n_turns), vit.n_blocks_, vit.token_dim_, patches + vit.n_prefix_tokens_) / rate
    b = n_new * n_pool * (1 + n_turns) * n_sets * 2 * patches**2 * vit.token_dim_ / rate
    if a + b < LONG:
        return a + b
    stage(f"estimated time on the CPU: about {_duration(a + b)} for {n_new} new images against the pool of "
          f"{n_pool} (ViT forward {_duration(a)}, scoring {_duration(b)}, at the {rate / 1e9:.0f} GFLOP/s float32 "
          "matmul rate measured now); a model fitted on fewer references, a smaller --image-size or ViT-S "
          "scores faster")
    return a + b


def announce_clouds(seconds_per_cloud, n_clouds, stage, vit=None, lnamd=None, rate=None):
    """The estimate of a run with point clouds; printed when long, returns the seconds.

    The 3D features (plane, cluster, FPFH, groups: not matrix products) are
    timed on one cloud (the second: the first pays for imports) and counted
    ``n_clouds`` times (batch and references). With the rgb images too (``vit``): the ViT forward as
    :func:`announce` counts it, and the fused scoring as two mutual
    scorings of the rgb features (the distance tables of both modalities,
    the 3D ones of the same size).
    """
    clouds = seconds_per_cloud * n_clouds
    a = b = 0.0
    if vit is not None and vit.device_.type == "cpu":
        rate = rate or matmul_rate()
        a, b = estimate(n_clouds, 0, _n_sets(vit, lnamd), depth=vit.n_blocks_, width=vit.token_dim_,
                        grid=vit.grid_size_, prefix=vit.n_prefix_tokens_, rate=rate)
        b *= 2
    if clouds + a + b < LONG:
        return clouds + a + b
    line = (f"estimated time: about {_duration(clouds + a + b)} (3D features {_duration(clouds)}: "
            f"{seconds_per_cloud:.2f} s per point cloud, as one of the {n_clouds} took")
    if vit is not None and a + b:
        line += f"; ViT forward {_duration(a)}, fused mutual scoring {_duration(b)} on the CPU"
    stage(line + ")")
    return clouds + a + b
