"""A full disk under the cache dir, for real (a small tmpfs): one line, exit 5, nothing
half-written, and the next run with room works."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildgraph.cli import main
from buildgraph.errors import StorageError

FULL = "buildgraph: error: no space left on device"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def resize(mount: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)


def fill(mount: Path) -> None:
    """Takes every free byte of the tmpfs."""
    free = shutil.disk_usage(mount).free
    with open(mount / "filler", "wb") as filler, contextlib.suppress(OSError):
        filler.write(b"\0" * free)


def assert_nothing_half_written(cache: Path) -> None:
    """Every blob is what its name says, the index parses, no temp file is left behind."""
    for blob in (cache / "blobs/sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, blob
    json.loads((cache / "index.json").read_text())
    ingest = cache / "ingest"
    assert not ingest.exists() or list(ingest.iterdir()) == []
    leftovers = [p for p in cache.rglob("*") if p.is_file() and p.name.startswith((".tmp", "tmp"))]
    assert leftovers == []


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("buildgraph: error:")]
    assert len(lines) == 1, err
    return lines[0]


def build(cache: Path, context: Path, *extra: str) -> int:
    return main(["build", str(context), "--cache-dir", str(cache), "--progress", "plain", *extra])


def test_layer_commit_on_a_full_disk_is_exit_5_and_leaves_no_entry(
    small_disk: Path, busybox_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = small_disk / "cache"
    shutil.copytree(busybox_cache, cache, symlinks=True)
    context = tmp_path / "ctx"
    context.mkdir()
    # The RUN's 5 MB fit in its upper dir; the layer made of them does not fit beside them.
    (context / "Dockerfile").write_text(
        "FROM busybox\nRUN dd if=/dev/urandom of=/big bs=1M count=5\n"
    )
    records = set((cache / "steps").rglob("*.json"))
    assert build(cache, context) == StorageError.exit_code == 5
    assert f"{context / 'Dockerfile'}:2: no space left on device" in one_error_line(capsys)
    assert_nothing_half_written(cache)
    assert len(set((cache / "steps").rglob("*.json")) - records) <= 1  # FROM's, not the RUN's
    resize(small_disk, "64m")
    assert build(cache, context) == 0  # with room, the same build goes through


def test_image_import_on_a_full_disk_is_exit_5(
    small_disk: Path, busybox_rootfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    resize(small_disk, "2m")  # the rootfs is ~2 MB: its blob fits, its snapshot does not
    cache = small_disk / "cache"
    argv = ["image", "import", str(busybox_rootfs), "-t", "bb:1", "--cache-dir", str(cache)]
    assert main(argv) == 5
    assert one_error_line(capsys).startswith(FULL)
    assert_nothing_half_written(cache)
    assert list((cache / "snapshots").glob("[0-9a-f]*")) == []  # no half-unpacked snapshot
    resize(small_disk, "12m")
    assert main(argv) == 0


def test_tagging_on_a_full_disk_is_exit_5_and_keeps_the_index(
    small_disk: Path, busybox_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = small_disk / "cache"
    shutil.copytree(busybox_cache, cache, symlinks=True)
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM busybox\nRUN echo hi > /hi\n")
    assert build(cache, context) == 0
    before = (cache / "index.json").read_bytes()
    fill(small_disk)
    capsys.readouterr()
    assert build(cache, context, "-t", "app:latest") == 5  # all cached: only the tag is written
    assert one_error_line(capsys).startswith(FULL)
    assert (cache / "index.json").read_bytes() == before
    assert_nothing_half_written(cache)
    (small_disk / "filler").unlink()
    assert build(cache, context, "-t", "app:latest") == 0
    assert b"app:latest" in (cache / "index.json").read_bytes()
