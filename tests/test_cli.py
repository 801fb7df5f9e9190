import csv
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED
from sklearn_musc import cli
from sklearn_musc.datasets import make_synthetic_defects, save_synthetic_defects

WEIGHTS = SHARED / "weights" / "dinov2_vits14_imgfocus_fp16.safetensors"
SMALL = ["--backbone", "timm:vit_small_patch14_dinov2", "--image-size", "56", "--device", "cpu", "--no-progress"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def image_dir(tmp_path):
    saved = save_synthetic_defects(tmp_path / "part", n_images=6, n_anomalous=2, image_size=64,
                                   kind="object", random_state=0)
    return tmp_path / "part" / "test", saved


def test_score_writes_csv_overlays_and_summary(image_dir, tmp_path, capsys):
    directory, saved = image_dir
    out = tmp_path / "out"
    assert cli.main(["score", str(directory), "--out", str(out), "--pretrained", "none",
                     "--contamination", "0.2", *SMALL]) == 0
    rows = read_csv(out / "scores.csv")
    assert len(rows) == 6 and set(rows[0]) == {"path", "score", "label", "msm_score"}
    assert sorted(r["path"] for r in rows) == sorted(
        str(p.relative_to(directory)) for p in directory.rglob("*.png"))
    assert sum(r["label"] == "anomalous" for r in rows) == 1  # 20 % of 6 images
    scores = np.array([float(r["score"]) for r in rows])
    assert np.isfinite(scores).all() and scores.min() >= 0.0 and scores.max() <= 1.0
    for r in rows:  # one overlay per image, at the image's own size
        overlay = Image.open(out / "overlays" / r["path"])
        assert overlay.size == Image.open(directory / r["path"]).size
    text = capsys.readouterr().out
    assert "scored 6 images" in text and "1 anomalous" in text and "most anomalous" in text


def test_score_refuses_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="found 0 image"):
        cli.main(["score", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), *SMALL])
    with pytest.raises(SystemExit, match="not a directory"):
        cli.main(["score", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), *SMALL])


def test_a_corrupt_image_is_named(image_dir, tmp_path):
    directory, _ = image_dir
    (directory / "good" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(Exception, match="broken.png"):
        cli.main(["score", str(directory), "--out", str(tmp_path / "o"), "--pretrained", "none", *SMALL])


def test_options_reach_the_estimators():
    parser_args = ["score", "d", "--out", "o", "--image-size", "224x168", "--r-list", "1", "3",
                   "--k-list", "1", "7", "--contamination", "0.1", "--max-subset-size", "50",
                   "--weights", "w.safetensors", "--layers", "2", "5"]
    captured = {}

    def fake_run(args, directory, pretrained):
        captured["pipe"] = cli.build_pipeline(args, pretrained)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "run_score", fake_run)
        cli.main(parser_args)
    pipe = captured["pipe"]
    assert pipe["vit"].image_size == (224, 168) and pipe["vit"].pretrained == "w.safetensors"
    assert pipe["vit"].layers == [2, 5]
    assert pipe["lnamd"].r_list == (1, 3) and pipe["rscin"].k_list == (1, 7)
    assert pipe["msm"].contamination == 0.1 and pipe["msm"].max_subset_size == 50


def test_demo_offline_falls_back_to_random_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_hub_reachable", lambda: False)
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
