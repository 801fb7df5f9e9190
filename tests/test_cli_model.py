"""The command line with saved models: ``fit REFS --model FILE``, ``score PATH... --model FILE``."""

import csv
import json

import joblib
import numpy as np
import pytest

from sklearn_musc import cli
from sklearn_musc.cli import run as cli_run
from _helpers import run_cli as run
from sklearn_musc.datasets import save_synthetic_defects

SMALL = ["--backbone", "timm:vit_small_patch14_dinov2", "--image-size", "56", "--device", "cpu", "--no-progress"]
RANDOM = ["--pretrained", "none", *SMALL]


def read_scores(path):
    with open(path, newline="", encoding="utf-8") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A model fitted on 6 good parts; 4 new parts (2 defective) in two folders."""
    root = tmp_path_factory.mktemp("line")
    save_synthetic_defects(root / "refs", n_images=6, n_anomalous=0, image_size=64, kind="object",
                           random_state=0)
    save_synthetic_defects(root / "new", n_images=4, n_anomalous=2, image_size=64, kind="object",
                           random_state=1)
    model = root / "m.joblib"
    assert cli.main([str(a) for a in ("fit", root / "refs" / "test", "--model", model, *RANDOM)]) == 0
    return root, model


def test_fit_then_score_a_folder_matches_the_python_api(fitted, tmp_path, capsys):
    root, model = fitted
    new = root / "new" / "test"
    rc, out, err = run(capsys, "score", new, "--model", model, "--out", tmp_path / "res", "--no-progress")
    assert rc == 0, err
    rows = read_scores(tmp_path / "res" / "scores.csv")
    paths = sorted(new.rglob("*.png"))
    assert sorted(rows) == sorted(p.relative_to(new).as_posix() for p in paths)
    pipe = joblib.load(model)
    expected = -pipe.score_samples([str(p) for p in paths])
    got = np.array([float(rows[p.relative_to(new).as_posix()]["score"]) for p in paths])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    summary = json.loads((tmp_path / "res" / "summary.json").read_text())
    assert summary["settings"]["pool_size"] == 6
    for name in rows:
        assert (tmp_path / "res" / "overlays" / f"{name}.png").is_file()
        assert (tmp_path / "res" / "maps" / f"{name}.npy").is_file()


def test_single_files_score_as_in_the_folder(fitted, tmp_path, capsys):
    """A new image's score does not depend on what else is scored with it."""
    root, model = fitted
    new = root / "new" / "test"
    paths = sorted(new.rglob("*.png"))
    rc, _, err = run(capsys, "score", paths[0], paths[-1], "--model", model, "--out", tmp_path / "one",
                     "--no-progress")
    assert rc == 0, err
    alone = read_scores(tmp_path / "one" / "scores.csv")
    rc, _, _ = run(capsys, "score", new, "--model", model, "--out", tmp_path / "all", "--no-progress")
    together = read_scores(tmp_path / "all" / "scores.csv")
    for p in (paths[0], paths[-1]):
        name = f"{p.parent.name}/{p.name}"  # a file given alone is named after its folder
        assert name in alone
        assert float(alone[name]["score"]) == pytest.approx(
            float(together[p.relative_to(new).as_posix()]["score"]), abs=1e-6)


def test_model_options_beside_model_are_refused_before_anything_runs(fitted, tmp_path, capsys, monkeypatch):
    root, model = fitted
    monkeypatch.setattr(cli_run, "load_model", lambda path: pytest.fail("the model was loaded"))
    rc, _, err = run(capsys, "score", root / "new" / "test", "--model", model, "--out", tmp_path / "x",
                     "--image-size", "112")
    assert rc == 2 and "--image-size cannot be combined with --model" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_bad_models_and_targets_are_one_line_errors(fitted, tmp_path, capsys):
    root, model = fitted
    new = root / "new" / "test"
    bad = tmp_path / "bad.joblib"
    bad.write_text("not a model")
    for argv, needle in [
        (("score", new, "--model", tmp_path / "none.joblib", "--out", tmp_path / "a"), "does not exist"),
        (("score", new, "--model", bad, "--out", tmp_path / "b"), "cannot be read"),
        (("score", next(new.rglob("*.png")), "--out", tmp_path / "c", *RANDOM), "without --model"),
        (("fit", root / "refs" / "test", "--model", model, *RANDOM), "--overwrite"),
        (("fit", root / "refs" / "test", "--model", tmp_path, *RANDOM), "is a folder"),
    ]:
        rc, _, err = run(capsys, *argv)
        assert rc == 2 and needle in err, (argv, err)
        errors = [line for line in err.splitlines() if not line.startswith("[")]  # not the stage lines
        assert len(errors) == 1 and errors[0].startswith("sklearn-musc: error: ")
    joblib.dump({"not": "a pipeline"}, bad)
    rc, _, err = run(capsys, "score", new, "--model", bad, "--out", tmp_path / "d")
    assert rc == 2 and "not a model saved by" in err


def test_fit_writes_the_model_whole_or_not_at_all(fitted, tmp_path, capsys, monkeypatch):
    root, _ = fitted
    target = tmp_path / "m.joblib"

    def broken_dump(obj, path):
        open(path, "wb").write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_run.joblib, "dump", broken_dump)
    rc, _, _ = run(capsys, "fit", root / "refs" / "test", "--model", target, *RANDOM)
    assert rc == 130 and list(tmp_path.iterdir()) == []
