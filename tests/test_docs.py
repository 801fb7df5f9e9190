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


def test_readme_layout_matches_the_tree():
    """README's "Project layout" names every module of the package (subpackages too) and top folder.

    And nothing that is gone.
    """
    import re

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.rst").read_text(encoding="utf-8")
    block = text.split("Project layout\n==============\n", 1)[1]
    named, folders, stack = set(), set(), []  # stack: (indent, folder) of the folders a line lies in
    for line in block.splitlines():
        if not line.startswith("    ") or not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent > 24:  # a description's second line
            continue
        entry = line.strip().split("  ")[0]  # the path column, before the description
        while stack and stack[-1][0] >= indent:
            stack.pop()
        prefix = "".join(f"{folder}/" for _, folder in stack)
        for name in (n.strip() for n in entry.split(",") if n.strip()):
            named.add(prefix + name)
            if name.endswith("/"):
                folders.add(prefix + name.rstrip("/"))
                stack.append((indent, name.rstrip("/")))
    files = {n for n in named if n.endswith(".py")}
    shipped = {p.relative_to(root).as_posix() for p in (root / "sklearn_musc").rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    packages = {p.parent.relative_to(root).as_posix() for p in (root / "sklearn_musc").rglob("__init__.py")}
    listed_packages = {f for f in folders if f.startswith("sklearn_musc")}
    assert shipped == files, f"modules not in the layout: {shipped - files}; named but absent: {files - shipped}"
    assert packages == listed_packages, f"packages: {packages ^ listed_packages}"
    top = {"sklearn_musc", "tests", "docs", "examples", "benchmarks", "studies", "reproduction", "tools"}
    assert top <= folders and all((root / f).is_dir() for f in top)
    assert all(re.fullmatch(r"[\w./]+", n) for n in files)
