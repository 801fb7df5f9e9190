"""The command line's time estimate before a long CPU run, and --no-progress for every bar (issue #24, item 5)."""

import math
from types import SimpleNamespace

import pytest
import torch

from sklearn_musc import _progress, cli
from sklearn_musc.cli import estimate
from sklearn_musc.datasets import save_synthetic_defects

RANDOM = ["--pretrained", "none", "--backbone", "timm:vit_small_patch14_dinov2", "--image-size", "56",
          "--device", "cpu"]


def paper_vit(device="cpu"):
    """ViTPatchTransformer's fitted attributes for the paper's ViT-L-14-336 at 518 px."""
    return SimpleNamespace(device_=torch.device(device), layers_=(5, 11, 17, 23), n_blocks_=24, token_dim_=1024,
                           grid_size_=(37, 37), n_prefix_tokens_=1, input_size_=(518, 518), patch_size_=(14, 14),
                           backbone_="open_clip:ViT-L-14-336", turns_=())


def test_the_arithmetic():
    # ViT: per block 24 T C^2 + 4 T^2 C; MSM: 2 L^2 C per pair of images per set
    assert estimate.vit_flops(3, 2, 8, 5) == 3 * 2 * (24 * 5 * 64 + 4 * 25 * 8)
    assert estimate.msm_flops(10, 0, 4, 9, 16) == 4 * 45 * 2 * 81 * 16
    assert estimate.msm_flops(10, 2, 1, 9, 16) == (45 + 20) * 2 * 81 * 16  # and each image against each reference
    assert estimate.msm_flops(10, 0, 1, 9, 16, max_subset_size=4) == (6 + 3 + 3) * 2 * 81 * 16  # subsets 4, 3, 3
    vit, msm = estimate.estimate(10, 0, 4, depth=2, width=16, grid=(3, 3), prefix=1, rate=1e6)
    assert math.isclose(vit, estimate.vit_flops(10, 2, 16, 10) / 1e6)
    assert math.isclose(msm, estimate.msm_flops(10, 0, 4, 9, 16) / 1e6)
    assert estimate.matmul_rate(size=64, repeats=1) > 0


def test_a_long_cpu_run_is_announced_with_faster_settings():
    lines = []
    lnamd = SimpleNamespace(aggregation="similarity", r_list=(1, 3, 5))
    seconds = estimate.announce(paper_vit(), lnamd, 200, 0, None, lines.append, rate=50e9)
    # 200 images at the paper's size: 4 sets x 19900 pairs x 2 x 1369^2 x 1024 operations, at 50 GFLOP/s
    assert seconds > 4 * 19900 * 2 * 1369**2 * 1024 / 50e9
    (line,) = lines
    assert line.startswith(f"estimated time on the CPU: about {seconds / 3600:.1f} h (") and "50 GFLOP/s" in line
    for faster in ("--image-size 224", "--backbone timm:vit_small_patch14_dinov2 --image-size 224",
                   "--max-subset-size 50"):
        assert faster in line


def test_short_or_gpu_runs_are_not_announced():
    lines = []
    lnamd = SimpleNamespace(aggregation="mean", r_list=(1, 3, 5))
    assert estimate.announce(paper_vit(), lnamd, 2, 0, None, lines.append, rate=1e15) < estimate.LONG
    assert estimate.announce(paper_vit("cuda"), lnamd, 200, 0, None, lines.append, rate=1e9) is None
    assert lines == []


@pytest.fixture
def images(tmp_path):
    save_synthetic_defects(tmp_path / "part", n_images=6, n_anomalous=2, image_size=64, kind="object",
                           random_state=0)
    return tmp_path / "part" / "test"


@pytest.mark.parametrize("no_progress", [False, True])
def test_the_cli_announces_and_no_progress_silences_every_bar(images, tmp_path, capsys, monkeypatch, no_progress):
    monkeypatch.setattr(estimate, "LONG", 0.0)  # announce even this small run
    monkeypatch.setattr(_progress, "DELAY", 0.0)  # bars from the first update
    argv = ["score", images, "--out", tmp_path / "out", *RANDOM] + (["--no-progress"] if no_progress else [])
    assert cli.main([str(a) for a in argv]) == 0
    err = capsys.readouterr().err
    assert "estimated time on the CPU: about" in err
    for bar in ("ViT forward:", "LNAMD:", "mutual scoring:"):
        assert (bar in err) != no_progress, bar


def test_scoring_new_images_against_a_large_pool_is_announced():
    lines = []
    vit = paper_vit()
    seconds = estimate.announce_new(vit, 4, 10, 200, lines.append, rate=50e9)
    tokens = 37 * 37 + 1
    expected = (estimate.vit_flops(10, 24, 1024, tokens) + 10 * 200 * 4 * 2 * (37 * 37) ** 2 * 1024) / 50e9
    assert math.isclose(seconds, expected)
    assert len(lines) == 1 and "10 new images against the pool of 200" in lines[0]
    assert estimate.announce_new(vit, 4, 1, 2, lines.append, rate=50e9) < estimate.LONG and len(lines) == 1
    assert estimate.announce_new(paper_vit("cuda"), 4, 10, 200, lines.append) is None
