"""Task results in the local cache: one directory per task key, moved into place whole.

Layout: `<cache>/tasks/<key[:2]>/<key>/` holds `result.json` (format, exit status, seconds, the
output files with their sizes and digests), `log` (everything the command printed) and
`outputs/` (the declared outputs, at their paths under /out). An entry is built in a held
scratch dir beside the entries and renamed into place, so a reader sees a whole entry or none;
a killed writer leaves a scratch dir that the next write or `cache prune` reclaims.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

from buildgraph.errors import CacheError, Location
from buildgraph.fs import atomic_write, held_dir, reclaim_unheld

FORMAT = 1
WORK_DIR = ".work"  # scratch dirs of entries being written
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class OutputFile:
    path: str  # relative to the output dir
    size: int
    digest: str  # xxh3-128 hex of the content
    mode: int  # permission bits


@dataclass(frozen=True, slots=True)
class TaskResult:
    key: str
    exit_code: int
    seconds: float  # how long the command ran when it was run
    outputs: tuple[OutputFile, ...]  # sorted by path
    log: bytes
    outputs_dir: Path  # the entry's copy of the outputs

    @property
    def files(self) -> tuple[tuple[str, str], ...]:
        return tuple((item.path, item.digest) for item in self.outputs)


def file_digest(path: Path) -> str:
    hasher = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def describe_outputs(root: Path) -> tuple[OutputFile, ...]:
    """The regular files under `root` (which holds only files and dirs: see worker/task_run.py)."""
    found = []
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            info = path.lstat()
            found.append(
                OutputFile(
                    str(path.relative_to(root)),
                    info.st_size,
                    file_digest(path),
                    info.st_mode & 0o777,
                )
            )
    return tuple(sorted(found, key=lambda item: item.path))


class TaskStore:
    """Task entries under `root` (`<cache>/tasks`); safe for concurrent processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / key

    def has(self, key: str) -> bool:
        return (self.path(key) / "result.json").is_file()

    def get(self, key: str, *, touch: bool = True) -> TaskResult | None:
        """The entry of `key`; None when there is none; CacheError when it is corrupt."""
        entry = self.path(key)
        try:
            data = (entry / "result.json").read_bytes()
        except FileNotFoundError:
            return None
        where = Location(entry / "result.json")
        try:
            doc = json.loads(data)
            if doc.get("format") != FORMAT or doc.get("key") != key:
                raise ValueError("not a task entry of this format and key")
            outputs = tuple(OutputFile(**item) for item in doc["outputs"])
            log = (entry / "log").read_bytes()
            if xxhash.xxh3_128_hexdigest(log) != doc["log"]:
                raise ValueError("the log does not match its digest")
            for item in outputs:  # sizes only: a full hash of every output at each replay
                size = (entry / "outputs" / item.path).lstat().st_size  # would cost its reading
                if size != item.size:
                    raise ValueError(f"output {item.path} has {size} bytes, not {item.size}")
            result = TaskResult(
                key, int(doc["exit_code"]), float(doc["seconds"]), outputs, log, entry / "outputs"
            )
        except (ValueError, KeyError, TypeError, OSError) as err:
            raise CacheError(f"corrupt task entry: {err}", where) from err
        if touch:  # last use, for `cache prune --older-than`
            with contextlib.suppress(OSError):
                os.utime(entry / "result.json")
        return result

    def put(
        self, key: str, exit_code: int, seconds: float, log: bytes, outputs: Path
    ) -> TaskResult:
        """Store a result whose outputs are the tree `outputs` (moved into the entry)."""
        with held_dir(self.root / WORK_DIR, "entry-") as scratch:
            entry = scratch / "entry"
            entry.mkdir()
            if outputs.is_dir():
                os.rename(outputs, entry / "outputs")  # same filesystem: see worker/task_run.py
            else:
                (entry / "outputs").mkdir()
            files = describe_outputs(entry / "outputs")
            (entry / "log").write_bytes(log)
            doc = {
                "format": FORMAT,
                "key": key,
                "exit_code": exit_code,
                "seconds": round(seconds, 3),
                "log": xxhash.xxh3_128_hexdigest(log),
                "outputs": [
                    {"path": f.path, "size": f.size, "digest": f.digest, "mode": f.mode}
                    for f in files
                ],
            }
            atomic_write(entry / "result.json", json.dumps(doc, sort_keys=True).encode())
            final = self.path(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(entry, final)
            except OSError:  # another process stored the same key first: keep theirs
                if not final.is_dir():
                    raise
        stored = self.get(key, touch=False)
        assert stored is not None
        return stored

    def remember(self, name: str, fields: dict[str, object]) -> None:
        """What task `name` last ran or replayed with (graph/task_keys.key_fields), for `plan`'s reasons."""
        path = self.root / "last" / f"{xxhash.xxh3_64_hexdigest(name.encode())}.json"
        atomic_write(path, json.dumps(fields, sort_keys=True).encode(), durable=False)

    def last(self, name: str) -> dict[str, object] | None:
        path = self.root / "last" / f"{xxhash.xxh3_64_hexdigest(name.encode())}.json"
        try:
            doc = json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None  # none (or an unreadable one): "never run here"
        return doc if isinstance(doc, dict) else None

    def forget(self, key: str) -> None:
        entry = self.path(key)
        if entry.is_dir():
            with (
                held_dir(self.root / WORK_DIR, "forget-") as scratch,
                contextlib.suppress(FileNotFoundError),
            ):
                os.rename(entry, scratch / "gone")  # readers see it whole or not at all

    def entries(self) -> Iterator[tuple[str, float, int]]:
        """(key, last use as a timestamp, bytes) of every entry, in no order."""
        for group in sorted(self.root.glob("[0-9a-f][0-9a-f]")):
            for entry in group.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    used = (entry / "result.json").stat().st_mtime
                    size = sum(
                        (Path(d) / n).lstat().st_size
                        for d, _, names in os.walk(entry)
                        for n in names
                    )
                    yield entry.name, used, size

    def prune(self, *, older_than: float | None, keep_bytes: int | None) -> tuple[int, int]:
        """Forget entries unused for `older_than` seconds, then the least recently used until
        the rest fit in `keep_bytes`; also reclaim killed writers' dirs. (entries, bytes)."""
        _dirs, freed = self.reclaim()
        entries = sorted(self.entries(), key=lambda entry: entry[1])
        cutoff = time.time() - older_than if older_than is not None else None
        total = sum(size for _, _, size in entries)
        removed = 0
        for key, used, size in entries:
            too_old = cutoff is not None and used < cutoff
            too_big = keep_bytes is not None and total > keep_bytes
            if not (too_old or too_big):
                continue
            self.forget(key)
            total -= size
            freed += size
            removed += 1
        return removed, freed

    def reclaim(self) -> tuple[int, int]:
        """Remove the scratch dirs killed writers left: (dirs, bytes)."""
        return reclaim_unheld(self.root / WORK_DIR)


def restore_outputs(result: TaskResult, destination: Path) -> None:
    """Make `destination` hold exactly the result's outputs (a replayed or a fresh run)."""
    parent = destination.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f".{destination.name}.{os.getpid()}.{time.monotonic_ns()}"
    try:
        shutil.copytree(result.outputs_dir, staging, symlinks=True)
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        elif destination.exists() or destination.is_symlink():
            destination.unlink()
        os.rename(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
