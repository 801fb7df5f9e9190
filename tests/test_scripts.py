"""Every study, benchmark and the reproduction runs on a tiny setting, so none can break silently.

tests/test_layout.py checks that each script imports public names only and
answers ``--help``; here each one runs its real code path, in this process
(no second torch import), on a tiny setting: the studies on a cache of two
synthetic "categories" tokenised by a small random ViT (``$MUSC_CACHE``, what
``studies/_cache.py`` reads), every output cache in a temporary folder, the
benchmarks on a few small images or random features.
"""

import runpy
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from sklearn_musc import ViTPatchTransformer, masks_to_input
from sklearn_musc.datasets import load_masks, load_mvtec, save_synthetic_defects

ROOT = Path(__file__).resolve().parents[1]
TINY_VIT = dict(backbone="timm:vit_small_patch14_dinov2", pretrained=None, image_size=224, device="cpu",
                progress=False, layers=(2, 5, 8, 11),
                backbone_kwargs={"depth": 12, "embed_dim": 32, "num_heads": 2})


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """studies/_cache.py's entries for two categories of 12 synthetic images, 4 of them defective.

    224 px, as the studies assume (16 x 16 patches), from a random ViT of 32 dimensions.
    """
    folder = tmp_path_factory.mktemp("musc-cache")
    vit = ViTPatchTransformer(**TINY_VIT).fit()
    for seed, (category, kind) in enumerate([("bottle", "object"), ("carpet", "texture")]):
        save_synthetic_defects(folder / "data" / category, n_images=12, n_anomalous=4, image_size=64,
                               kind=kind, random_state=seed)
        data = load_mvtec(folder / "data", category)  # as _cache.py reads the shared MVTec AD
        entry = dict(tokens=vit.transform(list(data.paths)), labels=np.asarray(data.labels),
                     defect_types=list(data.defect_types),
                     masks=masks_to_input(list(load_masks(data)), vit.input_size_), paths=list(data.paths))
        joblib.dump(entry, folder / f"{category}.joblib")
    return folder


@pytest.fixture
def run_script(tiny_cache, tmp_path, monkeypatch, capsys):
    """Run ``relative_path`` as ``__main__`` with ``argv``; every cache it writes lies under tmp_path."""
    monkeypatch.setenv("MUSC_CACHE", str(tiny_cache))
    for name in ("MUSC_STUDIES", "MUSC_LABELS_CACHE", "MUSC_OPTIONS_CACHE", "MUSC_SCORERS"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the scripts put their folders first
    import torch
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # a study's thread count is not this process's

    def run(relative_path, *argv, env=None):
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        for module in ("_cache", "fewshot", "bench_msm"):  # siblings the scripts import: fresh, for this env
            monkeypatch.delitem(sys.modules, module, raising=False)
        path = ROOT / relative_path
        sys.path.insert(0, str(path.parent))  # as `python path` does
        monkeypatch.setattr(sys, "argv", [str(path), *map(str, argv)])
        monkeypatch.chdir(tmp_path)
        try:
            runpy.run_path(str(path), run_name="__main__")
        except SystemExit as exc:
            assert exc.code in (None, 0), exc.code
        return capsys.readouterr().out

    return run


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    save_synthetic_defects(root / "part", n_images=10, n_anomalous=3, image_size=56, kind="object", random_state=0)
    return root / "part" / "test"


def _table_rows(out, first_cell):
    return [line for line in out.splitlines() if line.startswith(f"| {first_cell} |")]


def test_pool_dtype(run_script):
    rows = _table_rows(run_script("studies/pool_dtype.py", "bottle"), "bottle")
    assert len(rows) == 1 and rows[0].split("|")[2].strip() == "8"  # a pool of 70 % of 12 images


def test_options(run_script):
    env = {"OPTIONS_SETTINGS": "snamd t0.2 layers 8,11"}
    run_script("studies/options.py", "compute", "bottle", env=env)
    out = run_script("studies/options.py", "table", "bottle", env=env)
    assert "snamd t0.2 layers 8,11" in out


def test_labels(run_script):
    run_script("studies/labels.py", "compute", "bottle", "carpet")
    out = run_script("studies/labels.py", "table", "bottle", "carpet")
    assert len(_table_rows(out, "bottle")) == len(_table_rows(out, "carpet")) == 1
    assert "| **mean all** (2) |" in out


def test_conformal(run_script):
    out = run_script("studies/conformal.py", "table", "bottle")
    assert out.startswith("bottle (12, 4, 256, 12)")  # 12 images, 4 sets, 16 x 16 patches, 12 scorers


def test_bench_msm(run_script):
    out = run_script("benchmarks/bench_msm.py", "--n", "6", "--patches", "16", "--dim", "8", "--repeat", "1",
                     "--device", "cpu", "--radius", "0", "--repeat-ratio", "0.5")
    assert "N=6, L=16, C=8" in out
    diff = float(out.split("max abs diff of the scores: ")[1].split()[0])
    assert diff < 1e-5  # against the reference structure


def test_bench_novelty(run_script, image_folder):
    out = run_script("benchmarks/bench_novelty.py", "--images", image_folder, "--image-size", "56",
                     "--pool", "5", "--batch", "2", "--repeat", "2",
                     "--backbone-kwargs", '{"depth": 4, "embed_dim": 32, "num_heads": 2}')
    novelty, refit = out.split("scores ")[-1].split(" (novelty) vs ")
    assert abs(float(novelty) - float(refit.split()[0])) < 1e-5  # novelty = refit on pool + image


def test_bench_pipeline(run_script, image_folder):
    out = run_script("benchmarks/bench_pipeline.py", "--images", image_folder, "--image-size", "56",
                     "--device", "cpu", "--batch-size", "4", "--baseline",
                     "--backbone-kwargs", '{"depth": 4, "embed_dim": 32, "num_heads": 2}')
    assert out.startswith("N=10 ") and "max abs diff of the patch scores" in out
