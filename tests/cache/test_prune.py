"""cache prune: what tags and step records reach stays; the rest goes; builds still work."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from buildgraph.cache.local import LocalStore
from buildgraph.cache.prune import parse_duration, parse_size, prune, usage
from buildgraph.cache.steps import StepIndex
from buildgraph.cli import main
from buildgraph.errors import InputError


def build(cache: Path, context: Path, text: str, *extra: str) -> int:
    context.mkdir(parents=True, exist_ok=True)
    (context / "Dockerfile").write_text(text)
    return main(
        ["build", str(context), "--cache-dir", str(cache), "--progress", "plain", "-q", *extra]
    )


def test_prune_keeps_what_tags_and_records_reach(busybox_cache: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(busybox_cache, cache, symlinks=True)
    assert (
        build(
            cache, tmp_path / "a", "FROM busybox\nRUN head -c 100000 /dev/urandom > /a\n", "-t", "a"
        )
        == 0
    )
    assert build(cache, tmp_path / "b", "FROM busybox\nRUN head -c 200000 /dev/urandom > /b\n") == 0
    store = LocalStore(cache)
    before = usage(store)
    first = prune(store)  # only the untagged image's config and manifest are unreachable
    assert first.steps_removed == first.snapshots_removed == 0 and first.blobs_removed == 2
    index = StepIndex(cache / "steps")
    for path in (cache / "steps").glob("*/*.json"):
        record = index.get(path.stem)
        assert record is not None
        assert all(store.has_blob(layer.descriptor.digest) for layer in record.layers)
    old = time.time() - 3 * 86400
    for record in (cache / "steps").glob("*/*.json"):
        os.utime(record, (old, old))
    result = prune(store, older_than=parse_duration("1d"))
    assert result.steps_removed == before.steps
    assert (
        result.blobs_removed >= 1 and result.snapshots_removed >= 1 and result.bytes_freed > 200000
    )
    # the tagged images survive whole; a rebuild of "a" still works from them
    assert (
        main(
            [
                "image",
                "export",
                "a",
                "-o",
                f"type=local,dest={tmp_path / 'out'}",
                "--cache-dir",
                str(cache),
            ]
        )
        == 0
    )
    assert (tmp_path / "out/a").stat().st_size == 100000
    assert build(cache, tmp_path / "a", "FROM busybox\nRUN true\n") == 0


def test_prune_keeps_the_snapshots_of_a_tagged_image(busybox_cache: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(busybox_cache, cache, symlinks=True)  # busybox imported, never built on
    snapshots = sorted(p.name for p in (cache / "snapshots").iterdir() if not p.name.startswith("."))
    assert snapshots
    assert prune(LocalStore(cache)).snapshots_removed == 0
    assert sorted(p.name for p in (cache / "snapshots").iterdir() if not p.name.startswith(".")) == snapshots


def test_keep_storage_drops_the_oldest_first(busybox_cache: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(busybox_cache, cache, symlinks=True)
    assert (
        build(cache, tmp_path / "old", "FROM busybox\nRUN head -c 300000 /dev/urandom > /o\n") == 0
    )
    time.sleep(0.05)
    assert build(cache, tmp_path / "new", "FROM busybox\nRUN head -c 1000 /dev/urandom > /n\n") == 0
    store = LocalStore(cache)
    total = usage(store)
    prune(store, keep_storage=total.blob_bytes + total.snapshot_bytes - 300000)
    assert (
        build(
            cache,
            tmp_path / "new",
            "FROM busybox\nRUN head -c 1000 /dev/urandom > /n\n",
            "--progress",
            "json",
        )
        == 0
    )


@pytest.mark.parametrize(
    ("text", "value"), [("10GB", 10**10), ("500MiB", 500 * 2**20), ("1k", 1000)]
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "ten", "5XB", "7", "3w"])
def test_bad_size_or_duration_is_input_error(text: str) -> None:
    with pytest.raises(InputError):
        parse_size(text) if text != "7" and text != "3w" else parse_duration(text)


def test_cli_du_and_prune(busybox_cache: Path, tmp_path: Path, capsys) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(busybox_cache, cache, symlinks=True)
    assert main(["cache", "du", "--cache-dir", str(cache)]) == 0
    assert "blobs" in capsys.readouterr().out
    assert main(["cache", "prune", "--older-than", "bogus", "--cache-dir", str(cache)]) == 2
    assert main(["cache", "prune", "--keep-storage", "1GB", "--cache-dir", str(cache)]) == 0
    assert "removed 0 steps" in capsys.readouterr().out


def test_pruning_does_not_count_as_use(busybox_cache: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(busybox_cache, cache, symlinks=True)
    assert build(cache, tmp_path / "a", "FROM busybox\nRUN echo a > /a\n") == 0
    old = time.time() - 3 * 86400
    for record in (cache / "steps").glob("*/*.json"):
        os.utime(record, (old, old))
    prune(LocalStore(cache))  # looks at every record
    assert main(["cache", "ls", "--cache-dir", str(cache)]) == 0
    assert prune(LocalStore(cache), older_than=parse_duration("1d")).steps_removed == 2
