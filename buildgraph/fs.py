"""Filesystem primitives: atomic writes, file locks, held temp dirs, safe path joins."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from buildgraph.errors import InputError


@contextlib.contextmanager
def atomic_file(path: Path, mode: int = 0o644, *, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a temp file beside `path`; on success fsync (if `durable`) and rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    with atomic_file(path, mode, durable=durable) as handle:
        handle.write(data)


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False, wait: bool = True) -> Iterator[None]:
    """An advisory flock on `path` (created if missing); released on exit. With `wait`
    False, raise BlockingIOError at once if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(
            fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        )
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def held_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A new temp dir under `parent`, removed at the end and flock'ed meanwhile, so that
    `reclaim_unheld` (another process, after this one was killed) takes it only when no live
    process holds it. The kernel drops the lock when the holder dies, however it dies."""
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink > 0:
            break
        os.close(fd)  # a reclaimer took it between mkdtemp and flock: make another
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def unheld_dirs(parent: Path) -> Iterator[Path]:
    """The dirs under `parent` that no process holds (see `held_dir`), each yielded while
    this process holds it, so it stays unheld until the caller moves on."""
    try:
        entries = sorted(os.scandir(parent), key=lambda entry: entry.name)
    except FileNotFoundError:
        return
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live process holds it
        try:
            if os.fstat(fd).st_nlink > 0:
                yield Path(entry.path)
        finally:
            os.close(fd)


def reclaim_unheld(parent: Path) -> tuple[int, int]:
    """Remove every dir under `parent` that no process holds: (dirs, bytes) freed."""
    dirs = freed = 0
    for path in unheld_dirs(parent):
        freed += tree_size(path)
        shutil.rmtree(path, ignore_errors=True)
        dirs += 1
    return dirs, freed


def tree_size(path: Path) -> int:
    """Bytes of the files below `path` (apparent sizes, links not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def safe_join(root: Path, relative: str) -> Path:
    """Join a POSIX path below `root`, refusing `..` escapes and absolute names.

    Only the text is checked: callers that follow symlinks must also check the
    real path of each parent (see image.unpack).
    """
    parts: list[str] = []
    for part in PurePosixPath(relative).parts:
        if part in ("", ".", "/"):
            continue
        if part == "..":
            if not parts:
                raise InputError(f"path {relative!r} escapes {root}")
            parts.pop()
            continue
        parts.append(part)
    return root.joinpath(*parts) if parts else root


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
