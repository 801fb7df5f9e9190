"""The command line's calibrated decisions: ``fit --alpha``, p-values and the drift alarm of ``score --model``,
``score DIR --references REFS --fdr Q``."""

import csv
import json

import joblib
import numpy as np
import pytest

from sklearn_musc import cli, conformal_pvalues
from _helpers import run_cli as run
from sklearn_musc.datasets import save_synthetic_defects

SMALL = ["--backbone", "timm:vit_small_patch14_dinov2", "--image-size", "56", "--device", "cpu", "--no-progress",
         "--pretrained", "none", "--no-overlays"]


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def line(tmp_path_factory):
    """10 good parts fitted at alpha = 0.2; 5 new parts (2 defective)."""
    root = tmp_path_factory.mktemp("line")
    save_synthetic_defects(root / "refs", n_images=10, n_anomalous=0, image_size=64, kind="object", random_state=0)
    save_synthetic_defects(root / "new", n_images=5, n_anomalous=2, image_size=64, kind="object", random_state=1)
    model = root / "m.joblib"
    assert cli.main([str(a) for a in ("fit", root / "refs" / "test", "--model", model, "--alpha", 0.2, *SMALL)]) == 0
    return root, model


def test_score_with_a_calibrated_model_writes_pvalues_labels_and_the_drift_alarm(line, tmp_path, capsys):
    root, model = line
    rc, out, err = run(capsys, "score", root / "new" / "test", "--model", model, "--out", tmp_path / "r",
                       "--no-progress", "--no-overlays")
    assert rc == 0, err
    rows = read_rows(tmp_path / "r" / "scores.csv")
    pipe = joblib.load(model)
    msm = pipe["msm"]
    p = np.array([float(r["pvalue"]) for r in rows])
    paths = [str(root / "new" / "test" / r["path"]) for r in rows]
    expected = pipe[:-1].transform(paths)  # the detector's ImageScores, p-values included
    np.testing.assert_allclose(p, expected.pvalues, atol=1e-6)
    np.testing.assert_allclose(p, conformal_pvalues(msm.calibration_scores_, expected.scores), atol=1e-6)
    labels = np.array([r["label"] for r in rows])
    np.testing.assert_array_equal(labels == "anomalous", p <= 0.2)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["decision"]["rule"] == "conformal" and summary["decision"]["alpha"] == 0.2
    assert summary["drift"]["parts_seen"] == 5 and summary["drift"]["alarm"] is False
    assert all("pvalue" in i for i in summary["images"])
    report = (tmp_path / "r" / "report.html").read_text()
    assert "p-value" in report and "No drift alarm over 5 parts" in report and "p-value &lt;= 0.2" in report
    assert "labels: p-value <= 0.2" in out and "no drift alarm over 5 parts" in out


def test_fit_alpha_too_small_for_the_references_is_a_usage_error(line, tmp_path, capsys):
    root, _ = line
    rc, _, err = run(capsys, "fit", root / "refs" / "test", "--model", tmp_path / "m.joblib", "--alpha", 0.05,
                     *SMALL)
    assert rc == 2 and "--alpha 0.05 needs at least 19 references" in err and "found 10" in err
    assert not (tmp_path / "m.joblib").exists()
    with pytest.raises(SystemExit) as exit_:  # argparse's own usage error
        run(capsys, "fit", root / "refs" / "test", "--model", tmp_path / "m.joblib", "--alpha", 1.5, *SMALL)
    assert exit_.value.code == 2 and "--alpha: must be a number in (0, 1)" in capsys.readouterr().err


def test_batch_with_references_gets_pvalues_and_bh_labels(line, tmp_path, capsys):
    root, _ = line
    args = ("score", root / "new" / "test", "--references", root / "refs" / "test", "--out", tmp_path / "b",
            "--fdr", 0.3, *SMALL)
    rc, out, err = run(capsys, *args)
    assert rc == 0, err
    rows = read_rows(tmp_path / "b" / "scores.csv")
    p = np.array([float(r["pvalue"]) for r in rows])
    assert ((p > 0) & (p <= 1)).all() and np.allclose(p * 11, np.round(p * 11))  # 10 references
    from sklearn_musc import benjamini_hochberg

    rejected, _ = benjamini_hochberg(p, 0.3)
    np.testing.assert_array_equal(np.array([r["label"] for r in rows]) == "anomalous", rejected)
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["decision"]["rule"] == "benjamini-hochberg" and summary["settings"]["references"] == 10
    assert "Benjamini-Hochberg at false-discovery level 0.3" in out


def test_bad_decision_options_are_one_line_usage_errors(line, tmp_path, capsys):
    root, model = line
    rc, _, err = run(capsys, "score", root / "new" / "test", "--out", tmp_path / "x", "--fdr", 0.1, *SMALL)
    assert rc == 2 and "--fdr calibrates the batch against known-good parts: give them with --references" in err
    with pytest.raises(SystemExit) as exit_:
        run(capsys, "score", root / "new" / "test", "--out", tmp_path / "x", "--fdr", 0, *SMALL)
    assert exit_.value.code == 2 and "--fdr: must be a number in (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_references_beside_a_model_are_refused(line, tmp_path, capsys):
    root, model = line
    rc, _, err = run(capsys, "score", root / "new" / "test", "--model", model, "--references", root / "refs" / "test",
                     "--out", tmp_path / "y")
    assert rc == 2 and "a model's pool is its calibration" in err
