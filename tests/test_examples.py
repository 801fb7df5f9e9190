"""Every example runs to the end, as a user runs it, in a quick setting."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))

# Command-line options that make an example quick (each example documents its
# own); an example not listed runs with its defaults. Second: the files it
# must write in its working folder.
QUICK = {
    "plot_anomaly_grid.py": (["--n-scored", "8", "--n-images", "4", "--no-progress"], ["anomaly_grid.png"]),
    "rscin_behind_your_scorer.py": (["--n-images", "12", "--shots", "1", "--image-size", "112"], []),
}


def test_examples_are_found():
    assert EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(example, tmp_path):
    args, outputs = QUICK.get(example.name, ([], []))
    # the same sklearn_musc as the tests import, no display
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    result = subprocess.run([sys.executable, str(example), *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{example.name} failed:\n{result.stdout}\n{result.stderr}"
    for name in outputs:
        assert (tmp_path / name).is_file(), f"{example.name} did not write {name}"
