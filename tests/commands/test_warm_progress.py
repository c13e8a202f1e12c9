"""`buildgraph warm`: its progress (bar, lines, JSON events) and the total it ends with."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from registry_server import RegistryServer
from remote_repo import make_repo as make_two_targets
from rich.console import Console

from buildgraph.cli import main
from buildgraph.commands.warm import EntryFetched, WarmPlan, WarmResult
from buildgraph.ui.warm import PlainWarmRenderer, TtyWarmRenderer, total_line

FILES = {
    "base/Dockerfile": "FROM busybox\nRUN echo base > /base.txt && head -c 3000 /bin/sh > /b\n",
    "app/Dockerfile": "FROM base\nCOPY main.txt /app/\nRUN cat /base.txt /app/main.txt > /out\n",
    "app/main.txt": "v1\n",
}
TOTAL = re.compile(
    r"^warm: (\d+) entr(?:y|ies) fetched \(([\d,]+) bytes\), (\d+) already local, (\d+) missing"
)


@pytest.fixture(scope="module")
def remote(registry: RegistryServer, busybox_cache: Path, tmp_path_factory) -> str:
    """A cache repository that machine A filled with every step of both targets."""
    remote = f"{registry.host}/cache/test-warm-progress"
    machine_a = make_repo(tmp_path_factory.mktemp("a"), busybox_cache, remote)
    assert main(["run", "-f", str(machine_a / "Buildfile.yaml"), "--progress", "plain"]) == 0
    return remote


def make_repo(root: Path, busybox_cache: Path, remote: str) -> Path:
    """remote_repo's two targets, with a base layer of some size (the totals count bytes)."""
    return make_two_targets(root, busybox_cache, remote, FILES)


def contents(cache: Path) -> tuple[set[Path], dict[Path, int]]:
    """The step entries and the blobs (with their sizes) in a cache dir."""
    steps = set((cache / "steps").glob("*/*.json"))
    blobs = {path: path.stat().st_size for path in (cache / "blobs/sha256").iterdir()}
    return steps, blobs


def parse_total(text: str) -> tuple[int, int, int, int]:
    found = [TOTAL.match(line) for line in text.splitlines()]
    totals = [match for match in found if match]
    assert len(totals) == 1, text
    fetched, size, local, missing = totals[0].groups()
    return int(fetched), int(size.replace(",", "")), int(local), int(missing)


@pytest.mark.parametrize("progress", ["plain", "tty"])
def test_the_total_is_what_the_cache_dir_gained(
    remote: str, busybox_cache: Path, tmp_path: Path, capsys, progress: str
) -> None:
    machine_b = make_repo(tmp_path / "b", busybox_cache, remote)
    (machine_b / "app/main.txt").write_text("v2\n")  # its COPY and RUN are in no cache
    steps_before, blobs_before = contents(machine_b / "cache")
    capsys.readouterr()
    argv = ["warm", "-f", str(machine_b / "Buildfile.yaml"), "--progress", progress]
    assert main(argv) == 0
    captured = capsys.readouterr()
    fetched, size, local, missing = parse_total(captured.out)
    steps_after, blobs_after = contents(machine_b / "cache")
    new_blobs = {path: size for path, size in blobs_after.items() if path not in blobs_before}
    assert fetched == len(steps_after - steps_before) > 0
    assert size == sum(new_blobs.values()) > 3000
    assert (local, missing) == (0, 2)
    assert "(a run would build them)" in captured.out
    if progress == "tty":
        assert f"{fetched}/{fetched} entries" in captured.err
    else:
        assert f"{fetched} entries to fetch ({size:,} bytes), 2 missing" in captured.err

    # Everything is local now: a second warm fetches nothing.
    assert main(argv) == 0
    assert parse_total(capsys.readouterr().out) == (0, 0, fetched, missing)


def test_json_progress_is_one_event_per_line(
    remote: str, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    machine_b = make_repo(tmp_path / "b", busybox_cache, remote)
    capsys.readouterr()
    argv = ["warm", "-f", str(machine_b / "Buildfile.yaml"), "--progress", "json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert [e["state"] for e in events] == ["warm_planned"] + ["fetched"] * (len(events) - 2) + [
        "warm_done"
    ]
    planned, fetched, done = events[0], events[1:-1], events[-1]
    assert len(fetched) == planned["entries"] == done["fetched"] > 0
    assert sum(e["bytes"] for e in fetched) == fetched[-1]["bytes_done"] == done["bytes"]
    assert done["bytes"] == planned["bytes"]
    assert [e["entries_done"] for e in fetched] == list(range(1, len(fetched) + 1))
    assert done["missing"] == planned["missing"] == 0
    assert parse_total(captured.err) == (done["fetched"], done["bytes"], 0, 0)  # not on stdout


PLAN = WarmPlan(steps=5, local=1, entries=3, bytes=3000, missing=1)
FETCHES = [EntryFetched("a" * 32, 1000), EntryFetched("b" * 32, 0), EntryFetched("c" * 32, 2000)]
RESULT = WarmResult(steps=5, local=1, fetched=3, missing=1, bytes=3000)


def test_the_bar_reaches_its_total() -> None:
    output = io.StringIO()
    renderer = TtyWarmRenderer(Console(file=output, force_terminal=True, width=120))
    renderer.emit(PLAN)
    for event in FETCHES:
        renderer.emit(event)
    renderer.emit(RESULT)
    renderer.close()
    task = renderer.progress.tasks[0]
    assert task.finished and task.completed == task.total == 3000
    assert "3/3 entries" in output.getvalue()


def test_no_bar_when_nothing_is_fetched() -> None:
    output = io.StringIO()
    renderer = TtyWarmRenderer(Console(file=output, force_terminal=True, width=120))
    renderer.emit(WarmPlan(steps=2, local=2, entries=0, bytes=0, missing=0))
    renderer.emit(WarmResult(steps=2, local=2, fetched=0, missing=0, bytes=0))
    renderer.close()
    assert renderer.progress.tasks == [] and output.getvalue() == ""


def test_plain_progress_lines() -> None:
    output = io.StringIO()
    renderer = PlainWarmRenderer(output, interval=0.0)
    for event in (PLAN, *FETCHES, RESULT):
        renderer.emit(event)
    lines = [line.split("s ", 1)[1] for line in output.getvalue().splitlines()]
    assert lines[0] == "warm: 5 steps: 1 already local, 3 entries to fetch (3,000 bytes), 1 missing"
    assert [line.split(" (")[0] for line in lines[1:]] == [
        "warm: 1/3 entries, 1,000/3,000 bytes",
        "warm: 2/3 entries, 1,000/3,000 bytes",
        "warm: 3/3 entries, 3,000/3,000 bytes",
    ]


TOTAL_LINES = [
    (
        RESULT,
        "3 entries fetched (3,000 bytes), 1 already local, 1 missing (a run would build them)",
    ),
    (
        WarmResult(4, 3, 1, 0, 1234567),
        "1 entry fetched (1,234,567 bytes), 3 already local, 0 missing",
    ),
]


@pytest.mark.parametrize(("result", "line"), TOTAL_LINES)
def test_total_line(result: WarmResult, line: str) -> None:
    assert total_line(result) == f"warm: {line}"
