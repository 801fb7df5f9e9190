"""The documentation (docs/, Sphinx) builds without a single warning."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("numpydoc")

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_docs_build_without_warnings(tmp_path):
    # a subprocess: Sphinx imports the package and keeps global state; the same
    # sklearn_musc as the tests import. docs/conf.py makes it nitpicky (every
    # cross-reference resolves) and checks the Parameters sections (numpydoc).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "html" / "api.html").is_file()
    # the README's images, included from docs/, resolve from the pages that include them
    assert (tmp_path / "html" / "_images" / "bottle_grid.png").is_file()
