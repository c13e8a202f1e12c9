"""`--trace FILE`: a Chrome trace-event file of a real build (what Perfetto opens)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from buildgraph.cli import main

BUILDFILE = """version: 1
cache: {dir: cache}
targets:
  base: {context: base}
  api: {context: api, contexts: {base: "target:base"}}
"""
FILES = {
    "Buildfile.yaml": BUILDFILE,
    "base/Dockerfile": "FROM busybox\nRUN echo base > /base.txt\n",
    "api/Dockerfile": "FROM base\nCOPY main.txt /app/\nRUN cat /base.txt /app/main.txt > /out\n",
    "api/main.txt": "api v1\n",
}
SPAN_FIELDS = {"ph": str, "ts": int, "dur": int, "pid": int, "tid": int, "name": str}
RUN_PHASES = {"snapshot prepare", "run", "diff", "commit"}


@pytest.fixture
def repo(tmp_path: Path, busybox_cache: Path) -> Path:
    root = tmp_path / "repo"
    for path, text in FILES.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    shutil.copytree(busybox_cache, root / "cache", symlinks=True)
    return root


def spans(trace: Path) -> list[dict]:
    doc = json.loads(trace.read_text())
    assert doc["displayTimeUnit"] == "ms"
    found = [event for event in doc["traceEvents"] if event["ph"] == "X"]
    for span in found:
        for field, kind in SPAN_FIELDS.items():
            assert isinstance(span[field], kind), (field, span)
        assert span["ts"] >= 0 and span["dur"] >= 0
    return found


def inside(inner: dict, outer: dict) -> bool:
    return (
        inner["tid"] == outer["tid"]
        and outer["ts"] <= inner["ts"]
        and inner["ts"] + inner["dur"] <= outer["ts"] + outer["dur"]
    )


def test_a_run_trace_has_a_span_per_step_with_its_phases(repo: Path) -> None:
    trace = repo / "trace.json"
    argv = ["run", "-f", str(repo / "Buildfile.yaml"), "--progress", "plain", "--trace", str(trace)]
    assert main(argv) == 0
    found = spans(trace)
    steps = {span["name"]: span for span in found if span["cat"] == "step"}
    assert set(steps) == {
        "FROM docker.io/library/busybox:latest",  # resolved from the store: no phases
        "[stage-0] RUN echo base > /base.txt",
        "[stage-0] COPY main.txt /app/",
        "[stage-0] RUN cat /base.txt /app/main.txt > /out",
    }
    for title, step in steps.items():
        if title.startswith("FROM"):
            continue
        phases = {p["name"] for p in found if p["cat"] == "phase" and p["args"]["step"] == title}
        assert phases - {"queued"} == RUN_PHASES, title  # queued: only if it waited for -j
        for phase in (p for p in found if p["cat"] == "phase" and p["args"]["step"] == title):
            assert inside(phase, step), (phase, step)
    exports = {span["name"] for span in found if span["cat"] == "export"}
    assert exports == {"[base] export", "[api] export"}
    (command,) = [span for span in found if span["cat"] == "command"]
    assert all(span["ts"] + span["dur"] <= command["ts"] + command["dur"] for span in found)
    # The RUN of the second target starts after the COPY below it ended.
    copy = steps["[stage-0] COPY main.txt /app/"]
    later = steps["[stage-0] RUN cat /base.txt /app/main.txt > /out"]
    assert later["ts"] >= copy["ts"] + copy["dur"]


def test_a_failed_build_still_writes_its_trace(repo: Path) -> None:
    (repo / "api/Dockerfile").write_text("FROM busybox\nRUN exit 3\n")
    trace = repo / "trace.json"
    argv = ["build", str(repo / "api"), "--cache-dir", str(repo / "cache"), "--trace", str(trace)]
    assert main([*argv, "--progress", "plain"]) == 1
    states = {span["name"]: span["args"]["state"] for span in spans(trace) if span["cat"] == "step"}
    assert states["[stage-0] RUN exit 3"] == "failed"


def test_a_trace_into_a_missing_directory_is_bad_input(repo: Path, capsys) -> None:
    trace = repo / "no" / "such" / "trace.json"
    argv = ["run", "-f", str(repo / "Buildfile.yaml"), "--trace", str(trace)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "--trace" in error and len(error.strip().splitlines()) == 1
    assert not trace.parent.exists()
