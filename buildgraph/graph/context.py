"""Build context: select COPY/ADD sources (globs, .dockerignore) and digest their content."""

from __future__ import annotations

import fnmatch
import json
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from buildgraph.errors import InputError, Location
from buildgraph.frontend.ignore import IgnoreMatcher
from buildgraph.fs import atomic_write

READ_CHUNK = 1 << 20
GLOB_CHARS = frozenset("*?[")


@dataclass
class StatCache:
    """(path, size, mtime_ns, inode) -> content hash, so unchanged files are not re-read.

    Kept in the cache dir between runs (`load`/`save`), so a no-op rebuild reads no file."""

    entries: dict[tuple[str, int, int, int], str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    used: set[tuple[str, int, int, int]] = field(default_factory=set)

    @classmethod
    def load(cls, path: Path) -> StatCache:
        try:
            doc = json.loads(path.read_bytes())
            entries = {(e[0], e[1], e[2], e[3]): e[4] for e in doc["entries"]}
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            entries = {}  # missing or unreadable: start empty, it is only a shortcut
        return cls(entries)

    def save(self, path: Path) -> None:
        """Keep what this run used (so deleted files do not pile up)."""
        with self.lock:
            rows = [[*key, self.entries[key]] for key in sorted(self.used) if key in self.entries]
        atomic_write(path, json.dumps({"entries": rows}, separators=(",", ":")).encode())

    def content_hash(self, path: Path, info: os.stat_result) -> str:
        key = (str(path), info.st_size, info.st_mtime_ns, info.st_ino)
        with self.lock:
            known = self.entries.get(key)
            self.used.add(key)
        if known:
            return known
        hasher = xxhash.xxh3_128()
        with open(path, "rb") as handle:
            while chunk := handle.read(READ_CHUNK):
                hasher.update(chunk)
        digest = hasher.hexdigest()
        with self.lock:
            self.entries[key] = digest
        return digest


def select_sources(
    context: Path, patterns: Sequence[str], ignore: IgnoreMatcher, where: Location | None
) -> tuple[str, ...]:
    """The context paths the COPY/ADD sources name, in order: globs expanded, ignored ones
    dropped. A source that matches nothing, or leaves the context, is an input error."""
    selected: list[str] = []
    for pattern in patterns:
        relative = _inside(pattern, where)
        if GLOB_CHARS & set(relative):
            matches = [m for m in _glob(context, relative) if not ignore.matches(m)]
        else:
            matches = [relative] if _exists(context, relative, where) else []
            matches = [m for m in matches if m == "." or not ignore.matches(m)]
        if not matches:
            raise InputError(
                f"source {pattern!r} not found in build context or excluded by .dockerignore",
                where,
            )
        selected.extend(m for m in matches if m not in selected)
    return tuple(selected)


def _inside(pattern: str, where: Location | None) -> str:
    parts: list[str] = []
    for part in pattern.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise InputError(f"source {pattern!r} is outside the build context", where)
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts) or "."


def _exists(context: Path, relative: str, where: Location | None) -> bool:
    path = context / relative
    if not os.path.lexists(path):
        return False
    resolved = path.resolve()
    root = context.resolve()
    if resolved != root and root not in resolved.parents:
        raise InputError(f"source {relative!r} points outside the build context", where)
    return True


def _glob(context: Path, pattern: str) -> list[str]:
    """Match path component by component (`*` never crosses `/`, as in Go's filepath.Match)."""
    found = [""]
    for part in pattern.split("/"):
        following: list[str] = []
        for prefix in found:
            base = context / prefix if prefix else context
            if not base.is_dir():
                continue
            if GLOB_CHARS & set(part):
                names = sorted(n for n in os.listdir(base) if fnmatch.fnmatchcase(n, part))
            else:
                names = [part] if os.path.lexists(base / part) else []
            following.extend(f"{prefix}/{n}" if prefix else n for n in names)
        found = following
    return found


@dataclass(frozen=True, slots=True)
class Entry:
    path: str  # relative to the context
    kind: str  # file | dir | symlink
    mode: int
    target: str = ""  # symlink target
    content: str = ""  # content hash for files


def walk_selection(
    context: Path, selected: Sequence[str], ignore: IgnoreMatcher
) -> Iterator[tuple[Entry, Path]]:
    """Every entry COPY would take for `selected`: a top-level symlink is followed (as
    Docker does), symlinks below it are kept; ignored entries are skipped."""
    for relative in selected:
        top = context / relative if relative != "." else context
        info = top.stat()  # follows a top-level symlink; _exists checked it stays inside
        if not stat.S_ISDIR(info.st_mode):
            yield Entry(relative, "file", stat.S_IMODE(info.st_mode)), top
            continue
        yield Entry(relative, "dir", stat.S_IMODE(info.st_mode)), top
        yield from _walk_dir(context, top, relative, ignore)


def _walk_dir(
    context: Path, directory: Path, relative: str, ignore: IgnoreMatcher
) -> Iterator[tuple[Entry, Path]]:
    with os.scandir(directory) as scan:
        children = sorted(scan, key=lambda item: item.name)
    for child in children:
        child_relative = f"{relative}/{child.name}" if relative != "." else child.name
        info = child.stat(follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            if ignore.matches(child_relative):
                if ignore.can_skip_dir(child_relative):
                    continue
                # an exception below may re-include something: walk it, but not as an entry
                yield from _walk_dir(context, Path(child.path), child_relative, ignore)
                continue
            yield Entry(child_relative, "dir", stat.S_IMODE(info.st_mode)), Path(child.path)
            yield from _walk_dir(context, Path(child.path), child_relative, ignore)
        elif ignore.matches(child_relative):
            continue
        elif stat.S_ISLNK(info.st_mode):
            target = os.readlink(child.path)
            yield Entry(child_relative, "symlink", 0o777, target), Path(child.path)
        elif stat.S_ISREG(info.st_mode):
            yield Entry(child_relative, "file", stat.S_IMODE(info.st_mode)), Path(child.path)


def context_digest(
    context: Path,
    selected: Sequence[str],
    ignore: IgnoreMatcher,
    stat_cache: StatCache,
    *,
    include_modes: bool = True,
) -> str:
    """xxh3-128 over (path, type, mode, link target, content) of every entry; never mtimes.
    With COPY --chmod the modes are overridden, so they stay out of the key."""
    hasher = xxhash.xxh3_128()
    for entry, path in walk_selection(context, selected, ignore):
        content = stat_cache.content_hash(path, path.stat()) if entry.kind == "file" else ""
        mode = entry.mode if include_modes else 0
        hasher.update(f"{entry.path}\0{entry.kind}\0{mode:o}\0{entry.target}\0{content}\n".encode())
    return hasher.hexdigest()
