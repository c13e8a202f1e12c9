"""The local task store: a miss is None, a corrupt entry an error, entries appear whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from buildgraph.errors import CacheError
from buildgraph.cache.task_store import TaskStore, restore_outputs

KEY = "0123456789abcdef0123456789abcdef"


def stored(tmp_path: Path) -> TaskStore:
    outputs = tmp_path / "outputs"
    (outputs / "reports").mkdir(parents=True)
    (outputs / "junit.xml").write_text("<testsuite/>")
    (outputs / "reports/cover.txt").write_text("97%")
    store = TaskStore(tmp_path / "cache/tasks")
    store.put(KEY, 0, 1.5, b"2 passed\n", outputs)
    return store


def test_a_stored_result_reads_back_and_restores(tmp_path: Path) -> None:
    store = stored(tmp_path)
    assert store.get("f" * 32) is None
    result = store.get(KEY)
    assert result is not None
    assert (result.exit_code, result.log) == (0, b"2 passed\n")
    assert [item.path for item in result.outputs] == ["junit.xml", "reports/cover.txt"]
    destination = tmp_path / "out/test"
    destination.mkdir(parents=True)
    (destination / "stale").write_text("from before")
    restore_outputs(result, destination)
    assert sorted(str(p.relative_to(destination)) for p in destination.rglob("*")) == [
        "junit.xml",
        "reports",
        "reports/cover.txt",
    ]
    assert not list((tmp_path / "cache/tasks/.work").iterdir())  # no scratch left behind


@pytest.mark.parametrize(
    "damage",
    [
        lambda entry: (entry / "log").write_bytes(b"3 passed\n"),
        lambda entry: (entry / "outputs/junit.xml").write_text("<x/>"),
        lambda entry: (entry / "result.json").write_text("{"),
        lambda entry: (entry / "outputs/junit.xml").unlink(),
        lambda entry: (entry / "result.json").write_text(
            json.dumps({**json.loads((entry / "result.json").read_text()), "key": "other"})
        ),
    ],
)
def test_a_corrupt_entry_is_an_error(tmp_path: Path, damage) -> None:
    store = stored(tmp_path)
    damage(store.path(KEY))
    with pytest.raises(CacheError, match="corrupt task entry"):
        store.get(KEY)


def test_forget_removes_an_entry(tmp_path: Path) -> None:
    store = stored(tmp_path)
    store.forget(KEY)
    assert store.get(KEY) is None
    assert [key for key, _, _ in store.entries()] == []


def test_prune_forgets_old_entries_then_the_least_recently_used(tmp_path: Path) -> None:
    import os

    store = stored(tmp_path)
    other = "f" * 32
    (tmp_path / "more").mkdir()
    (tmp_path / "more/big.bin").write_bytes(b"x" * 1000)
    store.put(other, 0, 0.1, b"", tmp_path / "more")
    os.utime(store.path(KEY) / "result.json", (1_000_000, 1_000_000))  # used long ago
    assert store.prune(older_than=3600, keep_bytes=None)[0] == 1
    assert store.get(KEY) is None and store.get(other) is not None
    assert store.prune(older_than=None, keep_bytes=10_000)[0] == 0
    assert store.prune(older_than=None, keep_bytes=100)[0] == 1
    assert list(store.entries()) == []
