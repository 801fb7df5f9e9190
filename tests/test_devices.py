"""The same checks on every device torch sees: the CPU here, CUDA where there is one.

Each test runs on the CPU in CI, so the test itself is known to work; on a
machine with a GPU the ``cuda`` cases check the CUDA paths (device-resident
and streamed products, tensor-core precisions, autocast) against the same
float64 references.
"""

import numpy as np
import pytest
import torch

import _reference as ref
from _helpers import assert_similarity_table, make_tokens, unit_features
from sklearn_musc import LNAMDTransformer, MutualScoringDetector, RsCINRescorer, ViTPatchTransformer, _msm

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("precision", _msm.PRECISIONS)
@pytest.mark.parametrize("device", DEVICES)
def test_similarity_table_in_each_precision(rng, device, precision):
    Z = unit_features(rng)
    n, L, C = Z.shape
    dev = torch.device(device)
    plan = _msm.Plan(n, L, C, 2, dev, 2**28)
    table = _msm.max_similarity_table(torch.from_numpy(Z), plan, precision)
    assert_similarity_table(table, Z, precision, device)


def test_bfloat16_products_need_a_recent_torch(rng, monkeypatch):
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    assert _msm.bf16_products_supported() == ((major, minor) >= (2, 8))
    monkeypatch.setattr(_msm, "bf16_products_supported", lambda: False)
    feats = np.abs(rng.normal(size=(4, 1, 3, 3, 8)))
    with pytest.raises(ValueError, match=r"torch >= 2\.8"):
        MutualScoringDetector(device=DEVICES[-1], matmul_precision="bfloat16").fit(feats)


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_detector_matches_the_reference(rng, device, streamed):
    n, h, w, C = 12, 4, 4, 16
    L = h * w
    feats = LNAMDTransformer(r_list=(1, 3), device=device).fit_transform(make_tokens(rng, n=n, h=h, w=w, dim=C))
    budget = None
    if streamed:  # room for the table and tiles of 3 images, not for the whole set
        k_max = _msm.interval_bounds(n, 0.0, 0.3)[1]
        budget = 4 * (n * n * L + 3 * n * k_max * L) + 4 * (3 * L) ** 2 + 4 * 2 * 3 * L * C
        assert not _msm.Plan(n, L, C, k_max, torch.device(device), budget).resident
    det = MutualScoringDetector(device=device, memory_budget=budget).fit(feats)
    assert det.device_.type == device
    assert np.abs(det.set_patch_scores_ - ref.msm_sets(feats.features)).max() < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_lnamd_matches_the_reference(rng, device):
    tokens = make_tokens(rng, n=3, h=5, w=6, dim=8)
    feats = LNAMDTransformer(aggregation="mean", device=device).fit_transform(tokens)
    assert np.abs(feats.features - ref.lnamd(tokens, (1, 3, 5))).max() < 1e-5
    snamd = LNAMDTransformer(device=device).fit_transform(tokens)  # the default: SNAMD
    assert np.abs(snamd.features - ref.snamd(tokens, (1, 3, 5))).max() < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_default_memory_budget_is_half_the_free_memory(device):
    dev = torch.device(device)
    budget = _msm.default_memory_budget(dev)
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
    else:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        free = int(info["MemAvailable"].split()[0]) * 1024
    assert 0.45 * free < budget <= 0.55 * free  # free memory moves while the test runs


def _vit(device, precision="float32"):
    return ViTPatchTransformer(
        backbone="timm:vit_small_patch14_dinov2", pretrained=None, image_size=56,
        backbone_kwargs=dict(depth=4, embed_dim=64, num_heads=2), device=device,
        precision=precision, progress=False, dtype="float32", random_state=0,
    ).fit()


@pytest.mark.parametrize("device", DEVICES)
def test_vit_tokens_agree_with_the_cpu(rng, device):
    images = [rng.integers(0, 256, size=(60, 70, 3), dtype=np.uint8) for _ in range(3)]
    cpu = _vit("cpu").transform(images)
    out = _vit(device).transform(images)
    scale = np.abs(cpu.tokens).max()
    # float32 on CUDA may run the patch-embedding convolution in TF32 (cuDNN's default)
    assert np.abs(out.tokens - cpu.tokens).max() <= 2e-3 * scale
    assert np.abs(out.embeddings - cpu.embeddings).max() <= 2e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="autocast precisions need a CUDA device")
@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_vit_autocast_stays_close_to_float32(rng, precision):
    images = [rng.integers(0, 256, size=(60, 70, 3), dtype=np.uint8) for _ in range(3)]
    exact = _vit("cuda").transform(images)
    half = _vit("cuda", precision).transform(images)
    assert half.tokens.dtype == np.float32 and np.isfinite(half.tokens).all()
    assert np.abs(half.tokens - exact.tokens).max() <= 0.05 * np.abs(exact.tokens).max()


@pytest.mark.parametrize("device", DEVICES)
def test_whole_pipeline_on_the_device(rng, device):
    images = [rng.integers(0, 256, size=(60, 70, 3), dtype=np.uint8) for _ in range(6)]
    tokens = _vit(device).transform(images)
    feats = LNAMDTransformer(device=device).fit_transform(tokens)
    det = MutualScoringDetector(device=device, contamination=0.2)
    scores = det.fit_transform(feats)
    final = RsCINRescorer().fit(scores)
    assert det.anomaly_maps_.shape == (6, 56, 56) and np.isfinite(det.anomaly_maps_).all()
    assert np.isfinite(final.anomaly_scores_).all()
    cpu = MutualScoringDetector(device="cpu", contamination=0.2).fit(feats)
    assert np.abs(det.anomaly_maps_ - cpu.anomaly_maps_).max() < 1e-5


def test_available_ram_honours_a_container_limit(monkeypatch, tmp_path):
    files = {
        "/proc/meminfo": "MemTotal: 100 kB\nMemFree: 10 kB\nMemAvailable: 4000000 kB\n",
        "/sys/fs/cgroup/memory.max": "3000000000\n",
        "/sys/fs/cgroup/memory.current": "1000000000\n",
    }
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path in files:
            target = tmp_path / path.replace("/", "_")
            target.write_text(files[path])
            return real_open(target, *args, **kwargs)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    assert _msm._available_ram() == 2_000_000_000  # the container's 3 GB less 1 GB used
    files["/sys/fs/cgroup/memory.max"] = "max\n"
    assert _msm._available_ram() == 4_000_000 * 1024  # MemAvailable, not MemFree
    assert _msm.default_memory_budget(torch.device("cpu")) == 2_000_000 * 1024
