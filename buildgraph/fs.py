"""Filesystem primitives: atomic writes, file locks, safe path joins."""

from __future__ import annotations

import contextlib
import fcntl
import os
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
def file_lock(path: Path, *, shared: bool = False) -> Iterator[None]:
    """An advisory flock on `path` (created if missing); released on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


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
