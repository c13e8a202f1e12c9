"""Shared helpers for tests that drive the CLI: write a repository, run it, read its events."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from buildgraph.cli import main


def write_repo(root: Path, files: Mapping[str, str], busybox_cache: Path | None = None) -> Path:
    """Write FILES under ROOT; with `busybox_cache`, a copy of it as ROOT/cache."""
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    if busybox_cache is not None:
        shutil.copytree(busybox_cache, root / "cache", symlinks=True)
    return root


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def git_repo(root: Path, files: Mapping[str, str]) -> Path:
    """FILES written under ROOT and committed as the first commit of branch main."""
    write_repo(root, files)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "Test")
    git(root, "config", "user.email", "test@example.com")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "start")
    return root


def run_json(root: Path, capsys, *argv: str) -> tuple[int, list[dict], str]:
    """Exit code, progress events and stderr of `buildgraph run` in ROOT."""
    capsys.readouterr()
    code = run(root, *argv)
    out, err = capsys.readouterr()
    return code, events_in(out), err


def run(root: Path, *argv: str) -> int:
    """`buildgraph run` of ROOT's Buildfile with JSON progress (on stdout)."""
    return main(["run", "-f", str(root / "Buildfile.yaml"), "--progress", "json", *argv])


def events_in(out: str) -> list[dict]:
    """The JSON progress events in a run's stdout."""
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def started(events: list[dict]) -> list[str]:
    """Titles of the steps a run started (target exports are not steps)."""
    return [e["instruction"] for e in events if e["state"] == "started" and "key" in e]


def started_in(out: str) -> list[str]:
    """Titles of the steps a run with `--progress json` started, from its stdout."""
    return started(events_in(out))


def graph_nodes(root: Path, capsys) -> list[dict]:
    """The steps of the repository's graph, as `buildgraph graph --format json` lists them."""
    capsys.readouterr()
    assert main(["graph", "-f", str(root / "Buildfile.yaml"), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)["nodes"]


def step_keys(root: Path, capsys) -> dict[str, str]:
    """Title -> key of every step of the repository's graph (titles it holds once)."""
    return {node["title"]: node["key"] for node in graph_nodes(root, capsys)}
