"""The package's shape: the import layers of pyproject.toml hold, and modules stay small."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# Modules past this many lines probably have two jobs (STYLE.md). The solver, commands, cli
# and ui are held to 400 by tests/test_code_shape.py.
MAX_LINES = 420
SIZED = ("graph", "frontend", "image", "registry", "cache", "worker", "fs.py", "errors.py")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
        check=False,
    )


def test_layers_contract_is_kept() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "buildgraph layers KEPT" in result.stdout


def test_layers_contract_catches_a_backward_import(tmp_path: Path) -> None:
    """The contract is real: a store module that imports the graph breaks it."""
    shutil.copytree(ROOT / "buildgraph", tmp_path / "buildgraph")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    backward = tmp_path / "buildgraph" / "cache" / "backward.py"
    backward.write_text("from buildgraph.graph.keys import step_key  # noqa: F401\n")
    result = _lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "buildgraph.cache.backward -> buildgraph.graph.keys" in result.stdout


def test_every_package_is_in_a_layer() -> None:
    """A package outside the contract is checked by nothing: its imports go any way (as the
    tasks package of issue 15 did, imported by the cache and importing the worker)."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = {name for contract in contracts["contracts"] for name in contract["layers"]}
    package = ROOT / "buildgraph"
    found = {
        f"buildgraph.{path.stem}"
        for path in package.iterdir()
        if (path.is_dir() and (path / "__init__.py").exists())
        or (path.suffix == ".py" and path.stem not in ("__init__", "__main__"))
    }
    assert found - layers == set()


def _sized_modules() -> list[Path]:
    package = ROOT / "buildgraph"
    modules: list[Path] = []
    for name in SIZED:
        path = package / name
        modules.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return modules


@pytest.mark.parametrize(
    "module", _sized_modules(), ids=lambda path: str(path.relative_to(ROOT / "buildgraph"))
)
def test_module_is_small(module: Path) -> None:
    name = str(module.relative_to(ROOT / "buildgraph"))
    lines = len(module.read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: split it along its jobs"
