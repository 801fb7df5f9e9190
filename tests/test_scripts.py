"""Every study, benchmark and the reproduction runs on a tiny setting, so none can break silently.

tests/test_layout.py checks that each script imports public names only and
answers ``--help``; here each one runs its real code path, in this process
(no second torch import), on a tiny setting: the studies on a cache of two
synthetic "categories" tokenised by a small random ViT (``$MUSC_CACHE``, what
``studies/_cache.py`` reads), every output cache in a temporary folder, the
benchmarks on a few small images or random features.
"""

import json
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
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == ["  vit", "  lnamd", "  msm", "  rscin"]  # as they end
    assert lines[4].startswith("N=10 ") and "max abs diff of the patch scores" in out


@pytest.fixture(scope="module")
def gpu_check():
    """``tools/gpu_check.py``: the one command a lent GPU runs (issue #25)."""
    from _helpers import load_script

    return load_script("tools/gpu_check.py")


def _results(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_gpu_check_quick_on_the_cpu(gpu_check, tmp_path):
    """The QUICK CPU path of the GPU command: its benchmark steps, inputs made once, the summary."""
    out = tmp_path / "out"
    rc = gpu_check.main(["msm", "pipeline", "--quick", "--device", "cpu", "--out", str(out),
                         "--cache-dir", str(tmp_path / "cache"), "--only", "float32 matmul", "bfloat16"])
    assert rc == 0
    assert (tmp_path / "cache" / "inputs-quick.npy").is_file()  # made once, outside --out
    kinds = [r["kind"] for r in _results(out)]
    assert kinds.count("msm") == kinds.count("msm-baseline") == kinds.count("pipeline") == 1
    summary = json.loads((out / "summary.json").read_text())
    msm, = summary["msm"]
    assert (msm["precision"], msm["algorithm"], msm["n"]) == ("float32", "matmul", 12)
    assert msm["max_abs_diff"] < 1e-5 and msm["gflops"] > 0 and summary["gemm"][0]["size"] == 128
    pipe, = summary["pipeline"]
    assert pipe["n"] == 12 and set(pipe["seconds"]) == {"vit", "lnamd", "msm", "rscin"}
    statuses = [(s["status"], s["reason"]) for s in summary["steps"]]
    assert statuses == [("skipped", "needs CUDA")] * 4 + [("ok", None)] * 2  # bfloat16 first, as on a GPU
    md = (out / "summary.md").read_text()
    assert "| float32 | matmul | float32 |" in md and "| msm float32 matmul | ok |" in md
    assert "  msm: " in (out / "pipeline.log").read_text()  # stage times as they come


def test_gpu_check_skips_what_does_not_fit(gpu_check, tmp_path):
    out = tmp_path / "out"
    assert gpu_check.main(["--device", "cuda", "--budget", "20", "--out", str(out)]) == 0
    steps = [r for r in _results(out) if r["kind"] == "step"]
    assert [s["name"] for s in steps][:4] == ["tests", "msm bfloat16 fused", "msm bfloat16 matmul",
                                              "pipeline bfloat16 fused float16"]  # what the issue needs first
    assert all(s["status"] == "skipped" and "would not fit" in s["reason"] for s in steps)
    assert "| pipeline bfloat16 fused float16 | skipped |" in (out / "summary.md").read_text()
    assert all((ROOT / path).is_file() for path in gpu_check.TEST_FILES)


def test_gpu_check_stops_a_step_at_the_budget_and_keeps_its_lines(gpu_check, tmp_path):
    run = gpu_check.Run(gpu_check.argparse.Namespace(out=str(tmp_path), quick=True, cache_dir=str(tmp_path),
                                                    budget=60.0))
    proc, reader = run.start([sys.executable, "-c", "print('measured', flush=True); import time; time.sleep(60)"],
                             "msm.log")
    rc, timed_out = run.finish(proc, reader, 3.0)
    assert timed_out and rc != 0
    assert "measured" in (tmp_path / "msm.log").read_text()


def test_gpu_check_reads_the_outcome_of_each_test(gpu_check):
    log = ("tests/test_fused.py::test_a[cuda-tf32] PASSED  [ 10%]\n"
           "tests/test_fused.py::test_b[cuda] FAILED  [ 20%]\n"
           "tests/test_devices.py::test_c[float16] SKIPPED (no) [ 30%]\n")  # cut off here
    parsed = gpu_check.parse_tests(log)
    assert parsed["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert parsed["failed"] == ["tests/test_fused.py::test_b[cuda]"]


def test_gpu_check_summary_measures_against_the_bf16_rate(gpu_check, tmp_path):
    """The GPU table's shares and targets, from records as the benchmarks write them on a GPU."""
    msm = dict(kind="msm", n=200, L=1369, C=1024, first_fit_s=9.0, peak_gpu_gib=3.0, tuned_config=None,
               matmul_precision="bfloat16", device_name="GPU", torch="2.11", cuda="13.0", triton="3.6")
    records = [
        {"kind": "machine", "date": "today", "python": "3.12", "gpu": "H100", "open_clip_torch": "3.3.0"},
        {**msm, "algorithm": "fused", "fit_s": 0.3, "gflops": 250e3, "share_of_matmul": 0.5,
         "matmul_gflops": 500e3, "table_s": 0.2, "table_gflops": 350e3, "gemm_size": 8192, "gemm_gflops": 700e3},
        {**msm, "algorithm": "matmul", "fit_s": 0.5, "gflops": 150e3, "share_of_matmul": 0.29,
         "matmul_gflops": 520e3, "table_s": 0.4, "table_gflops": 190e3},
        {"kind": "msm-baseline", "matmul_precision": "bfloat16", "algorithm": "fused", "baseline_s": 6.0,
         "speedup": 20.0, "max_abs_diff": 1e-3},
        {"kind": "pipeline", "matmul_precision": "bfloat16", "algorithm": "fused", "features_dtype": "float16",
         "n_images": 200, "backbone": "open_clip:ViT-L-14-336", "image_size": [518, 518], "n_sets": 4,
         "aggregation": "similarity", "seconds": {"vit": 1.0, "lnamd": 0.5, "msm": 1.9, "rscin": 0.1},
         "total_s": 3.5, "ms_per_image": 17.5, "msm_gflops": 312e3, "peak_gpu_gib": 20.0, "peak_host_gib": 9.0},
        {"kind": "step", "name": "tests", "status": "ok", "seconds": 50.0, "ended_at_s": 60.0,
         "tests": {"counts": {"passed": 2}, "failed": [], "passed": ["a", "b"]}},
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = gpu_check.summarize(tmp_path, 420)
    assert summary["bf16_matmul_gflops"] == 520e3  # the best bfloat16 rate of the run
    fused, matmul = summary["msm"]
    assert fused["share_of_bf16_rate"] == pytest.approx(250 / 520) and fused["speedup"] == 20.0
    assert matmul["speedup"] is None  # the reference was timed beside the fused run only
    targets = summary["targets"]
    assert not targets["msm_bf16_fused_fit_share_of_bf16_rate"]["met"]
    assert targets["msm_bf16_fused_table_share_of_bf16_rate"]["met"]  # 350 / 520 = 0.67 >= 0.6
    assert targets["pipeline_ms_per_image"] == {"value": 17.5, "target": 20.0, "met": True}
    assert summary["pipeline"][0]["msm_share_of_bf16_rate"] == pytest.approx(0.6)
    md = (tmp_path / "summary.md").read_text()
    assert "Card: H100; torch 2.11 (CUDA 13.0), Triton 3.6, open_clip 3.3.0" in md
    assert "| bfloat16 | fused | 0.300 | 250000 | 50 | 48 | 0.200 | 67 |" in md
    assert "| bfloat16 | fused | float16 | 3.50 | 17.5 | 1.00 | 0.50 | 1.90 | 0.100 | 312000 | 60 |" in md
    assert "CUDA tests (tests/test_devices.py tests/test_fused.py): 2 passed (ok)." in md
