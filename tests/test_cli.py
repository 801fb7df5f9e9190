"""The command line: inputs, errors, outputs (issue #12 items 1-6, 8)."""

import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from _helpers import SHARED
from sklearn_musc import cli
from sklearn_musc.cli import command as cli_main
from sklearn_musc.cli import options as cli_options
from sklearn_musc.cli import run as cli_run
from sklearn_musc.datasets import make_synthetic_defects, save_synthetic_defects
from _helpers import run_cli as run

WEIGHTS = SHARED / "weights" / "dinov2_vits14_imgfocus_fp16.safetensors"
SMALL = ["--backbone", "timm:vit_small_patch14_dinov2", "--image-size", "56", "--device", "cpu", "--no-progress"]
RANDOM = ["--pretrained", "none", *SMALL]


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def image_dir(tmp_path):
    saved = save_synthetic_defects(tmp_path / "part", n_images=6, n_anomalous=2, image_size=64,
                                   kind="object", random_state=0)
    return tmp_path / "part" / "test", saved


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test's run if the backbone is loaded: everything must be checked before."""
    def fail(vit):
        raise AssertionError("the model ran before the inputs were checked")

    monkeypatch.setattr(cli_run, "load_backbone", fail)


def test_score_writes_csv_overlays_maps_and_summary(image_dir, tmp_path, capsys):
    directory, saved = image_dir
    out = tmp_path / "out"
    rc, text, err = run(capsys, "score", directory, "--out", out, "--contamination", "0.2", *RANDOM)
    assert rc == 0, err
    rows = read_csv(out / "scores.csv")
    assert len(rows) == 6 and set(rows[0]) == {"path", "score", "label", "msm_score"}
    assert sorted(r["path"] for r in rows) == sorted(
        p.relative_to(directory).as_posix() for p in directory.rglob("*.png"))
    assert sum(r["label"] == "anomalous" for r in rows) == 1  # 20 % of 6 images
    scores = np.array([float(r["score"]) for r in rows])
    assert np.isfinite(scores).all() and scores.min() >= 0.0 and scores.max() <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 6 and summary["settings"]["r_list"] == [1, 3, 5]
    assert summary["input_size"] == [56, 56] and "torch" in summary["versions"]
    assert set(summary["timings_s"]) >= {"vit", "mutual_scoring", "rscin"}
    by_path = {r["path"]: r for r in summary["images"]}
    for r in rows:  # one overlay per image at the image's size, one map at the input size
        entry = by_path[r["path"]]
        assert entry["overlay"] == f"overlays/{r['path']}.png"
        overlay = Image.open(out / entry["overlay"])
        assert overlay.size == Image.open(directory / r["path"]).size
        amap = np.load(out / entry["map"])
        assert amap.dtype == np.float32 and amap.shape == (56, 56)
        assert entry["score"] == pytest.approx(float(r["score"]), abs=1e-6)
    assert "scored 6 images" in text and "1 anomalous" in text and "most anomalous" in text
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):  # progress of every stage
        assert stage in err
    assert not [p for p in out.iterdir() if p.name.startswith(".sklearn-musc-partial")]


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and "sklearn-musc" in capsys.readouterr().out


def test_score_refuses_an_empty_or_missing_folder(tmp_path, capsys, no_model):
    (tmp_path / "empty").mkdir()
    rc, _, err = run(capsys, "score", tmp_path / "empty", "--out", tmp_path / "o", *SMALL)
    assert rc == 2 and "found 0 readable image" in err and len(err.strip().splitlines()) == 1
    rc, _, err = run(capsys, "score", tmp_path / "nothing", "--out", tmp_path / "o", *SMALL)
    assert rc == 2 and "does not exist" in err


# ----------------------------------------------------------------- item 1: output inside the input


def test_rerun_with_the_output_inside_the_input_folder_reads_no_overlay(image_dir, capsys):
    directory, _ = image_dir
    out = directory / "results"
    rc, _, err = run(capsys, "score", directory, "--out", out, "--contamination", "0.2", *RANDOM)
    assert rc == 0, err
    first = read_csv(out / "scores.csv")
    rc, _, err = run(capsys, "score", directory, "--out", out, "--contamination", "0.2", "--overwrite", *RANDOM)
    assert rc == 0, err
    second = read_csv(out / "scores.csv")
    assert len(second) == 6 and not any(r["path"].startswith("results/") for r in second)
    assert [r["label"] for r in second] == [r["label"] for r in first]
    # an earlier run's folder under another name is not read either
    rc, _, err = run(capsys, "score", directory, "--out", directory.parent / "elsewhere", *RANDOM)
    assert rc == 0, err
    assert len(read_csv(directory.parent / "elsewhere" / "scores.csv")) == 6


# ----------------------------------------------------------------- item 2: hidden files and folders


def test_hidden_files_and_folders_are_not_read(image_dir, tmp_path, capsys):
    directory, _ = image_dir
    checkpoints = directory / "scratch" / ".ipynb_checkpoints"
    checkpoints.mkdir()
    (checkpoints / "000-checkpoint.png").write_bytes((directory / "scratch" / "000.png").read_bytes())
    (directory / "good" / "._000.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble sidecar")
    (directory / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    rc, _, err = run(capsys, "score", directory, "--out", tmp_path / "out", *RANDOM)
    assert rc == 0, err
    paths = [r["path"] for r in read_csv(tmp_path / "out" / "scores.csv")]
    assert len(paths) == 6 and not any("/." in "/" + p for p in paths)


def test_the_cli_and_the_dataset_loaders_share_one_suffix_list(tmp_path, capsys):
    from sklearn_musc.cli import options
    from sklearn_musc.datasets import _readers
    from sklearn_musc.images import IMAGE_SUFFIXES

    assert _readers.IMAGE_SUFFIXES is options.IMAGE_SUFFIXES is IMAGE_SUFFIXES and ".gif" in IMAGE_SUFFIXES
    rng = np.random.default_rng(0)
    for i, suffix in enumerate([".gif", ".webp", ".png"]):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"im{i}{suffix}")
    rc, _, err = run(capsys, "score", tmp_path, "--out", tmp_path.parent / (tmp_path.name + "-out"), *RANDOM)
    assert rc == 0, err
    rows = read_csv(tmp_path.parent / (tmp_path.name + "-out") / "scores.csv")
    assert sorted(r["path"] for r in rows) == ["im0.gif", "im1.webp", "im2.png"]


# ----------------------------------------------------------------- item 3: errors before the model


@pytest.mark.parametrize("options, message", [
    (["--k-list", "0"], "--k-list"),
    (["--r-list", "2"], "--r-list"),
    (["--max-subset-size", "1"], "--max-subset-size"),
    (["--batch-size", "0"], "--batch-size"),
    (["--device", "gpu"], "device"),
    (["--backbone", "timm:no_such_vit"], "unknown backbone"),
])
def test_bad_options_stop_before_any_model_runs(image_dir, tmp_path, capsys, no_model, options, message):
    directory, _ = image_dir
    rc, _, err = run(capsys, "score", directory, "--out", tmp_path / "o", *RANDOM, *options)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "scores.csv").exists()


def test_the_detector_checks_the_subsets_before_any_model_runs(image_dir, tmp_path, capsys, no_model):
    """The subset rule is the detector's (check_batch); the command line asks it before the backbone."""
    directory, _ = image_dir
    Image.open(directory / "good" / "000.png").save(directory / "good" / "extra.png")  # 7 images
    rc, _, err = run(capsys, "score", directory, "--out", tmp_path / "o", *RANDOM, "--max-subset-size", "2")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "--max-subset-size 2" in err and "7 images cannot be split into 4 subsets" in err
    assert not (tmp_path / "o" / "scores.csv").exists()


def test_a_window_too_large_for_the_grid_stops_before_the_tokens(image_dir, tmp_path, capsys, monkeypatch):
    """The r_list-vs-grid rule is LNAMD's (check_grid): asked once the backbone's grid is known."""
    directory, _ = image_dir
    monkeypatch.setattr(cli_run, "compute", lambda *a, **k: pytest.fail("the tokens were computed"))
    rc, _, err = run(capsys, "score", directory, "--out", tmp_path / "o", *RANDOM, "--r-list", "1", "9")
    assert rc == 2 and [line for line in err.splitlines() if "error" in line] == [err.strip().splitlines()[-1]], err
    assert "--r-list with --image-size 56" in err and "4 x 4 patch grid" in err and "at most 7" in err


def test_bad_contamination_is_a_usage_error(image_dir, tmp_path, capsys, no_model):
    directory, _ = image_dir
    with pytest.raises(SystemExit) as exc:
        cli.main(["score", str(directory), "--out", str(tmp_path / "o"), "--contamination", "0.7", *RANDOM])
    assert exc.value.code == 2 and "(0, 0.5]" in capsys.readouterr().err


def test_an_unusable_output_folder_stops_before_any_model_runs(image_dir, tmp_path, capsys, no_model):
    directory, _ = image_dir
    (tmp_path / "file").write_text("x")
    rc, _, err = run(capsys, "score", directory, "--out", tmp_path / "file", *RANDOM)
    assert rc == 2 and "not a folder" in err
    rc, _, err = run(capsys, "score", directory, "--out", directory, *RANDOM)
    assert rc == 2 and "input folder itself" in err


def test_a_corrupt_image_stops_before_any_model_runs_naming_it(image_dir, tmp_path, capsys, no_model):
    directory, _ = image_dir
    (directory / "good" / "broken.png").write_bytes(b"not a png")
    good = (directory / "good" / "000.png").read_bytes()
    (directory / "good" / "truncated.png").write_bytes(good[: len(good) // 2])
    rc, _, err = run(capsys, "score", directory, "--out", tmp_path / "o", *RANDOM)
    assert rc == 2 and "good/broken.png" in err and "--skip-unreadable" in err and "1 more" in err
    assert len(err.strip().splitlines()) == 1


def test_skip_unreadable_scores_the_rest_and_lists_the_skipped(image_dir, tmp_path, capsys):
    directory, _ = image_dir
    (directory / "good" / "broken.png").write_bytes(b"not a png")
    rc, _, err = run(capsys, "score", directory, "--out", tmp_path / "o", "--skip-unreadable", *RANDOM)
    assert rc == 0, err
    assert "skipping unreadable image good/broken.png" in err
    assert len(read_csv(tmp_path / "o" / "scores.csv")) == 6
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [s["path"] for s in summary["skipped"]] == ["good/broken.png"]
    assert "good/broken.png" in (tmp_path / "o" / "report.html").read_text()


# ----------------------------------------------------------------- item 4: colliding names


def test_images_with_one_stem_get_their_own_overlays(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    for suffix in (".png", ".jpg", ".tif"):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(folder / f"x{suffix}")
    rc, _, err = run(capsys, "score", folder, "--out", tmp_path / "out", *RANDOM)
    assert rc == 0, err
    for suffix in (".png", ".jpg", ".tif"):
        assert (tmp_path / "out" / "overlays" / f"x{suffix}.png").is_file()
        assert (tmp_path / "out" / "maps" / f"x{suffix}.npy").is_file()


# ----------------------------------------------------------------- item 6: partial outputs


def test_a_non_utf8_file_name_is_written_everywhere(image_dir, tmp_path, capsys):
    directory, _ = image_dir
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes, not UTF-8
    (directory / "good" / name).write_bytes((directory / "good" / "001.png").read_bytes())
    rc, _, err = run(capsys, "score", directory, "--out", tmp_path / "o", *RANDOM)
    assert rc == 0, err
    rows = read_csv(tmp_path / "o" / "scores.csv")
    assert len(rows) == 7 and "good/caf\ufffd.png" in [r["path"] for r in rows]
    assert (tmp_path / "o" / "overlays" / "good" / "caf\ufffd.png.png").is_file()
    json.loads((tmp_path / "o" / "summary.json").read_text(encoding="utf-8"))


def test_an_interrupted_run_leaves_no_file_that_looks_finished(image_dir, tmp_path, capsys, monkeypatch):
    from sklearn_musc.cli import outputs as _outputs

    directory, _ = image_dir
    calls = []
    original = _outputs.anomaly_map_rgb

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(_outputs, "anomaly_map_rgb", interrupted)
    out = tmp_path / "o"
    rc, _, err = run(capsys, "score", directory, "--out", out, *RANDOM)
    assert rc == 130 and "interrupted" in err
    assert sorted(p.name for p in out.iterdir()) == []  # nothing half written, no staging left


def test_an_earlier_run_is_refused_or_replaced_with_overwrite(image_dir, tmp_path, capsys):
    directory, _ = image_dir
    out = tmp_path / "o"
    rc, _, err = run(capsys, "score", directory, "--out", out, *RANDOM)
    assert rc == 0, err
    (out / "notes.txt").write_text("mine")  # not the run's: kept
    rc, _, err = run(capsys, "score", directory, "--out", out, *RANDOM)
    assert rc == 2 and "--overwrite" in err
    (directory / "good" / "000.png").unlink()
    rc, _, err = run(capsys, "score", directory, "--out", out, "--overwrite", *RANDOM)
    assert rc == 0, err
    assert not (out / "overlays" / "good" / "000.png.png").exists()  # the old overlay is gone
    assert not (out / "maps" / "good" / "000.png.npy").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert len(read_csv(out / "scores.csv")) == 5


def test_a_folder_of_an_older_version_is_refused(image_dir, tmp_path, capsys):
    directory, _ = image_dir
    out = tmp_path / "o"
    (out / "overlays").mkdir(parents=True)
    (out / "overlays" / "x.png").write_bytes(b"")
    (out / "scores.csv").write_text("path,score\n")
    rc, _, err = run(capsys, "score", directory, "--out", out, *RANDOM)
    assert rc == 2 and "earlier run" in err
    rc, _, err = run(capsys, "score", directory, "--out", out, "--overwrite", *RANDOM)
    assert rc == 0 and "not written by this run" in err  # the stale overlay is named, not kept silently


# ----------------------------------------------------------------- item 8: errors as one line


def test_offline_without_weights_fails_at_once_naming_weights(image_dir, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(cli_run, "_hub_reachable", lambda: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    directory, _ = image_dir
    start = time.perf_counter()
    rc, _, err = run(capsys, "score", directory, "--out", tmp_path / "o", *SMALL)
    assert time.perf_counter() - start < 30
    assert rc == 3 and "--weights" in err
    assert [line for line in err.splitlines() if "error" in line] == [err.splitlines()[-1]]
    assert "Traceback" not in err


def test_library_errors_are_one_line_and_debug_shows_the_traceback(image_dir, tmp_path, capsys):
    directory, _ = image_dir
    rc, _, err = run(capsys, "score", directory, "--out", tmp_path / "o", *RANDOM, "--layers", "40")
    assert rc == 2 and "layer 40 is out of range" in err and "--debug" in err
    with pytest.raises(ValueError, match="out of range"):
        cli.main(["score", str(directory), "--out", str(tmp_path / "o"), *RANDOM, "--layers", "40", "--debug"])


def test_options_reach_the_estimators():
    parser_args = ["score", "d", "--out", "o", "--image-size", "224x168", "--r-list", "1", "3",
                   "--k-list", "1", "7", "--contamination", "0.1", "--max-subset-size", "50",
                   "--weights", "w.safetensors", "--layers", "2", "5"]
    captured = {}

    def fake_run(args, directory, pretrained):
        captured["pipe"] = cli_options.build_pipeline(args, pretrained)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli_main, "run_score", fake_run)
        cli.main(parser_args)
    pipe = captured["pipe"]
    assert pipe["vit"].image_size == (224, 168) and pipe["vit"].pretrained == "w.safetensors"
    assert pipe["vit"].layers == [2, 5]
    assert pipe["lnamd"].r_list == (1, 3) and pipe["rscin"].k_list == (1, 7)
    assert pipe["msm"].contamination == 0.1 and pipe["msm"].max_subset_size == 50


def test_preset_option_sets_the_steps_after_the_backbone():
    """--preset paper-visa: the paper's aggregation, interval and RsCIN; given lists still win."""
    def pipeline(*options):
        args = cli.build_parser().parse_args(["score", "d", "--out", "o", *options])
        return cli_options.build_pipeline(args, cli_options.pretrained(args))

    paper = pipeline("--preset", "paper-visa")
    assert (paper["lnamd"].aggregation, paper["msm"].topmin_max, paper["rscin"].k_list,
            paper["rscin"].embedding) == ("mean", 0.3, (1, 8, 9), "image")
    default = pipeline()
    assert (default["lnamd"].aggregation, default["msm"].topmin_max, default["rscin"].k_list) == \
        ("similarity", 0.2, (1, 7))
    assert pipeline("--preset", "paper-mvtec", "--k-list", "1", "5")["rscin"].k_list == (1, 5)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["score", "d", "--out", "o", "--preset", "paper"])


def test_demo_offline_falls_back_to_random_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_run, "_hub_reachable", lambda: False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--image-size", "56", "--device", "cpu",
                     "--no-progress", "--no-overlays"]) == 0
    captured = capsys.readouterr()
    assert "RANDOMLY INITIALISED" in captured.err
    assert "check against the planted defects" in captured.out
    assert len(read_csv(tmp_path / "demo" / "scores.csv")) == 16


@pytest.mark.shared_data
def test_demo_with_real_weights_finds_the_planted_defects(tmp_path):
    # the installed entry point, as a user runs it
    result = subprocess.run(
        [sys.executable, "-m", "sklearn_musc", "demo", "--out", str(tmp_path / "demo"),
         "--backbone", "timm:vit_small_patch14_dinov2", "--weights", str(WEIGHTS), "--no-progress",
         "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "4 of 4 defective images flagged, 0 false alarms" in result.stdout
    rows = read_csv(tmp_path / "demo" / "scores.csv")
    flagged = {r["path"].split("/")[0] for r in rows if r["label"] == "anomalous"}
    assert "good" not in flagged
    assert make_synthetic_defects(n_images=16, n_anomalous=4, image_size=224, kind="object",
                                  random_state=0).labels.sum() == 4
