"""Build context: select COPY/ADD sources (globs, .dockerignore) and digest their content."""

from __future__ import annotations

import fnmatch
import json
import os
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from buildgraph.errors import InputError, Location
from buildgraph.frontend.ignore import IgnoreMatcher
from buildgraph.fs import atomic_write

READ_CHUNK = 1 << 20
GLOB_CHARS = frozenset("*?[")


StatKey = tuple[str, int, int, int]  # path, size, mtime_ns, inode
KEEP_DAYS = 7  # an entry no run has used for this long is dropped (its file is likely gone)


def _today() -> int:
    return int(time.time() // 86400)


@dataclass
class StatCache:
    """(path, size, mtime_ns, inode) -> content hash, so unchanged files are not re-read.

    Kept in the cache dir between runs (`load`/`save`), so a no-op rebuild reads no file. Each
    entry remembers the day a run last used it: a run of some targets keeps the entries of the
    others (a monorepo CI builds subsets), and entries unused for KEEP_DAYS are dropped."""

    entries: dict[StatKey, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    used: set[StatKey] = field(default_factory=set)
    last_used: dict[StatKey, int] = field(default_factory=dict)  # key -> day number
    added: bool = False  # a file was hashed this run

    @classmethod
    def load(cls, path: Path) -> StatCache:
        today = _today()
        try:
            rows = json.loads(path.read_bytes())["entries"]
            entries = {(e[0], e[1], e[2], e[3]): e[4] for e in rows}
            last_used = {(e[0], e[1], e[2], e[3]): e[5] if len(e) > 5 else today for e in rows}
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            entries, last_used = {}, {}  # missing or unreadable: start empty, only a shortcut
        return cls(entries, last_used=last_used)

    def save(self, path: Path) -> None:
        """Write the entries back when this run changed anything worth keeping: new hashes,
        entries used for the first time today, entries to drop."""
        today = _today()
        with self.lock:
            stale = {k for k, day in self.last_used.items() if day < today - KEEP_DAYS}
            touched = any(self.last_used.get(key) != today for key in self.used)
            if not (self.added or touched or stale - self.used):
                return
            for key in self.used:
                self.last_used[key] = today
            seen_paths = {key[0] for key in self.used}
            for key in list(self.last_used):
                if key in self.used:
                    continue
                if key in stale or key[0] in seen_paths:  # old, or an older version of a file
                    del self.last_used[key]
            rows = [
                [*key, self.entries[key], self.last_used[key]]
                for key in sorted(self.last_used)
                if key in self.entries
            ]
        atomic_write(path, json.dumps({"entries": rows}, separators=(",", ":")).encode())

    def content_hash(self, path: str | Path, info: os.stat_result) -> str:
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
            self.added = True
        return digest


def select_sources(
    context: Path, patterns: Sequence[str], ignore: IgnoreMatcher, where: Location | None
) -> tuple[str, ...]:
    """The context paths the COPY/ADD sources name, in order: globs expanded, ignored ones
    dropped. A plain source that is missing, or one that leaves the context, is an input
    error; a wildcard may match nothing."""
    selected: list[str] = []
    for pattern in patterns:
        relative = _inside(pattern, where)
        if GLOB_CHARS & set(relative):
            matches = [m for m in _glob(context, relative) if not ignore.matches(m)]
        else:
            matches = [relative] if _exists(context, relative, where) else []
            matches = [m for m in matches if m == "." or not ignore.matches(m)]
        if not matches and GLOB_CHARS & set(relative):
            continue  # BuildKit's AllowEmptyWildcard: a pattern may match nothing
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
) -> Iterator[tuple[Entry, str, os.stat_result]]:
    """Every entry COPY would take for `selected`, with its path and stat: a top-level symlink
    is followed (as Docker does), symlinks below it are kept; ignored entries are skipped.
    Plain strings and one stat per entry: a 10,000-file context is walked on every run."""
    for relative in selected:
        top = os.path.join(context, relative) if relative != "." else str(context)
        info = os.stat(top)  # follows a top-level symlink; _exists checked it stays inside
        if not stat.S_ISDIR(info.st_mode):
            yield Entry(relative, "file", stat.S_IMODE(info.st_mode)), top, info
            continue
        yield Entry(relative, "dir", stat.S_IMODE(info.st_mode)), top, info
        yield from _walk_dir(top, relative, ignore)


def _walk_dir(
    directory: str, relative: str, ignore: IgnoreMatcher
) -> Iterator[tuple[Entry, str, os.stat_result]]:
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
                yield from _walk_dir(child.path, child_relative, ignore)
                continue
            yield Entry(child_relative, "dir", stat.S_IMODE(info.st_mode)), child.path, info
            yield from _walk_dir(child.path, child_relative, ignore)
        elif ignore.matches(child_relative):
            continue
        elif stat.S_ISLNK(info.st_mode):
            target = os.readlink(child.path)
            yield Entry(child_relative, "symlink", 0o777, target), child.path, info
        elif stat.S_ISREG(info.st_mode):
            yield Entry(child_relative, "file", stat.S_IMODE(info.st_mode)), child.path, info


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
    for entry, path, info in walk_selection(context, selected, ignore):
        content = stat_cache.content_hash(path, info) if entry.kind == "file" else ""
        mode = entry.mode if include_modes else 0
        hasher.update(f"{entry.path}\0{entry.kind}\0{mode:o}\0{entry.target}\0{content}\n".encode())
    return hasher.hexdigest()
