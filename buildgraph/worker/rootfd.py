"""File operations through descriptors below a root dir fd: symlinks resolved as if it were
"/", directories opened without following links, file data and xattrs copied fd to fd."""

from __future__ import annotations

import contextlib
import os
import stat

from buildgraph.image.layer import OVERLAY_XATTR_PREFIXES

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO must not block
MAX_SYMLINK_HOPS = 40
SKIPPED_XATTRS = ("security.selinux", *OVERLAY_XATTR_PREFIXES)  # host labels, overlay internals


def resolve_in_root(root_fd: int, parts: list[str]) -> list[str]:
    """Follow symlinks in `parts` as if `root_fd` were "/" (continuity's fs.RootPath): an
    absolute target restarts at the root and ".." stops there. A missing part ends it."""
    pending = list(parts)
    walked: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if walked:
                walked.pop()
            continue
        try:
            fd = open_dir(root_fd, walked)
        except OSError:
            return [*walked, part, *pending]
        try:
            info = os.stat(part, dir_fd=fd, follow_symlinks=False)
            target = os.readlink(part, dir_fd=fd) if stat.S_ISLNK(info.st_mode) else None
        except OSError:
            return [*walked, part, *pending]
        finally:
            os.close(fd)
        if target is None:
            walked.append(part)
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            return [*walked, part, *pending]  # stays a symlink: the caller reports the loop
        if target.startswith("/"):
            walked = []
        pending[:0] = [p for p in target.split("/") if p not in ("", ".")]
    return walked


def open_dir(root_fd: int, parts: list[str]) -> int:
    fd = os.dup(root_fd)
    try:
        for part in parts:
            next_fd = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def copy_data(source: int, out: int) -> None:
    while True:
        try:
            if os.sendfile(out, source, None, 1 << 30) == 0:
                return
        except OSError:  # a filesystem without sendfile support: copy through userspace
            while chunk := os.read(source, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
            return


def copy_xattrs(source_fd: int, fd: int) -> None:
    try:
        names = os.listxattr(source_fd)
    except OSError:
        return
    for key in names:
        if key.startswith(SKIPPED_XATTRS):
            continue
        with contextlib.suppress(OSError):  # like BuildKit: log-and-skip what cannot be stored
            os.setxattr(fd, key, os.getxattr(source_fd, key))


def is_whiteout(info: os.stat_result) -> bool:
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


def stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def lstat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
