"""reproduction/reproduce.py on a tiny synthetic MVTec-layout root with a tiny random ViT."""

import csv
import json

import numpy as np
import pytest

from sklearn_musc.datasets import save_synthetic_defects
from _helpers import load_script

COLUMNS = ["category", "image_auroc", "image_f1max", "image_ap", "pixel_auroc", "pixel_f1max", "pixel_ap",
           "pro", "image_auroc_msm"]


@pytest.fixture(scope="module")
def reproduce():
    return load_script("reproduction/reproduce.py")


@pytest.fixture
def data_root(tmp_path):
    for seed, (name, kind) in enumerate([("disk", "object"), ("weave", "texture")]):
        save_synthetic_defects(tmp_path / "data" / name, n_images=6, n_anomalous=2, image_size=56,
                               kind=kind, random_state=seed)
    return tmp_path / "data"


def tiny_args(data_root, out, *extra):
    return ["--dataset", "mvtec", "--data-root", str(data_root), "--out", str(out),
            "--backbone", "timm:vit_small_patch14_dinov2", "--pretrained", "none",
            "--backbone-kwargs", '{"depth": 4, "embed_dim": 64, "num_heads": 2}',
            "--image-size", "56", "--device", "cpu", "--no-progress", *extra]


def test_table_and_resume(reproduce, data_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    reproduce.main(tiny_args(data_root, out))
    assert capsys.readouterr().out.count("skipped") == 0

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == COLUMNS
    assert [r["category"] for r in rows] == ["disk", "weave", "mean"]
    values = np.array([[float(r[c]) for c in COLUMNS[1:]] for r in rows])
    assert np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0
    np.testing.assert_allclose(values[-1], values[:-1].mean(axis=0), atol=1e-5)

    stored = json.loads((out / "categories" / "disk.json").read_text())
    assert stored["settings"]["image_size"] == 56 and stored["n_images"] == 6
    markdown = (out / "results.md").read_text()
    assert "| disk |" in markdown and "| **mean** |" in markdown
    assert "differs from the paper's" in markdown

    # a rerun with the same settings computes nothing
    def fail(*args, **kwargs):
        raise AssertionError("a finished category was recomputed")

    with monkeypatch.context() as m:
        m.setattr(reproduce, "run_category", fail)
        reproduce.main(tiny_args(data_root, out))
    assert capsys.readouterr().out.count("skipped") == 2
    with open(out / "results.csv", newline="") as f:
        assert [float(r["image_auroc"]) for r in csv.DictReader(f)] == list(values[:, 0])

    # other settings: both categories again
    reproduce.main(tiny_args(data_root, out, "--k-list", "1", "2", "--categories", "weave", "disk"))
    assert capsys.readouterr().out.count("skipped") == 0
    assert json.loads((out / "categories" / "disk.json").read_text())["settings"]["k_list"] == [1, 2]
    with open(out / "results.csv", newline="") as f:
        assert [r["category"] for r in csv.DictReader(f)] == ["weave", "disk", "mean"]


def test_paper_setting(reproduce, tmp_path):
    def settings(*extra):
        return reproduce.settings_of(reproduce.parse_args(["--data-root", "x", "--out", "y", *extra]))

    assert reproduce.is_paper_setting(settings())
    assert reproduce.is_paper_setting(settings("--dataset", "visa", "--pretrained", "openai"))
    assert settings("--dataset", "visa")["k_list"] == [1, 8, 9]
    assert not reproduce.is_paper_setting(settings("--image-size", "224"))
    assert not reproduce.is_paper_setting(settings("--dataset", "btad"))  # no published means
    assert not reproduce.is_paper_setting(settings("--max-subset-size", "100"))

    s = settings()
    result = {"category": "bottle", "n_images": 1, "seconds": 1.0,
              "metrics": dict.fromkeys(reproduce.COLUMNS, 0.5)}
    reproduce.write_markdown([result], result["metrics"], s, "cuda:0", tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "| paper (mean) | 97.8 | 97.5 | 99.1 | 97.3 | 62.6 | 62.7 | 93.8 | – |" in text
