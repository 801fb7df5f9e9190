"""The house rules a new maintainer relies on: no private name reached across modules; every script still runs."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sklearn_musc"
# the scripts outside the package: each must at least import and answer --help
SCRIPTS = sorted(
    [p for p in (ROOT / "studies").glob("*.py") if not p.name.startswith("_")]
    + list((ROOT / "benchmarks").glob("bench_*.py"))
    + [ROOT / "reproduction" / "reproduce.py"]
)
# Scripts that reach into a private module (the set may only shrink, and is
# empty): the kernels that benchmarks time and studies replay are public on
# purpose in sklearn_musc.kernels, and reproduce.py records the weights
# through presets.resolve_weights.
SCRIPT_EXCEPTIONS = set()


def _private_imports(path, package_module=None):
    """(module, name) of each private name ``path`` imports from another module (relative imports resolved)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        module = node.module or ""
        if node.level and package_module is not None:
            base = package_module.split(".")[: -node.level]
            module = ".".join(base + ([module] if module else []))
        for alias in node.names:
            name = alias.name
            if name.startswith("_") and not name.startswith("__"):
                # `from . import _msm` imports a module, not a name of another module
                if not (PACKAGE / Path(*module.split(".")[1:]) / f"{name}.py").is_file():
                    found.append((module, name))
    return found


def test_no_module_imports_a_private_name_of_another():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if parts[-1] == "__init__":
            module += ".__init__"
        found += [(path.relative_to(ROOT).as_posix(), m, n) for m, n in _private_imports(path, module)]
    assert found == [], f"private names imported across modules: {found}"


def test_the_walk_finds_a_private_import(tmp_path):
    """The test above can fail: a private name imported from another module is found."""
    (tmp_path / "m.py").write_text("from .scoring import _salient_features\nfrom . import _msm\n")
    assert _private_imports(tmp_path / "m.py", "sklearn_musc.m") == [("sklearn_musc.scoring", "_salient_features")]


def _private(module):
    return any(part.startswith("_") and not part.startswith("__") for part in module.split("."))


def test_scripts_use_public_names_only():
    found = set()
    for path in SCRIPTS:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sklearn_musc"):
                names = [node.module] if _private(node.module) else [
                    f"{node.module}.{a.name}" for a in node.names if _private(a.name)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("sklearn_musc") and _private(a.name)]
            else:
                continue
            found.update((path.name, name) for name in names)
    assert found <= SCRIPT_EXCEPTIONS, f"scripts importing private names: {sorted(found - SCRIPT_EXCEPTIONS)}"


def _package_rebinds(path):
    """``module.name = ...`` where ``module`` was imported from sklearn_musc: a script patching the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sklearn_musc"):
            bound.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("sklearn_musc"))
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for target in targets:
            if isinstance(target, ast.Attribute):
                root = target.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in bound:
                    found.append(ast.unparse(target))
    return found


def test_scripts_set_parameters_rather_than_patch_the_package(tmp_path):
    """No script replaces a function or constant of the package at run time (a setting is a parameter)."""
    found = {path.name: names for path in SCRIPTS if (names := _package_rebinds(path))}
    assert found == {}, f"scripts assigning into sklearn_musc: {found}"
    (tmp_path / "s.py").write_text("from sklearn_musc import _msm\n_msm.max_similarity_table = print\n")
    assert _package_rebinds(tmp_path / "s.py") == ["_msm.max_similarity_table"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_script_imports_and_answers_help(script):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *(p for p in sys.path if p)]))
    result = subprocess.run([sys.executable, str(script), "--help"], cwd=script.parent, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(result.stdout.strip()) > 50
