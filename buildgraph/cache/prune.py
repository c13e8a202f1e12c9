"""Garbage collection of the cache dir: what tags and step records reach stays, the rest goes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from buildgraph.cache.local import LocalStore
from buildgraph.cache.steps import StepIndex
from buildgraph.errors import CacheError, InputError
from buildgraph.fs import file_lock, reclaim_unheld, tree_size, unheld_dirs
from buildgraph.image.oci import Descriptor, Index, Manifest, parse_document
from buildgraph.cache.task_store import TaskStore

GC_LOCK = ".gc.lock"  # builds hold it shared, prune exclusive
WORK_DIR = "snapshots/.work"  # step dirs, each held by its process (worker.snapshot.WORK_DIR)
LEGACY_TMP_DIR = "snapshots/.tmp"  # step dirs of versions before issue 16 (never held)
KEPT_ROOTS_DIR = "snapshots/.roots"  # chroot templates kept between builds (worker.kept_templates)
UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}
DURATIONS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class Usage:
    blobs: int
    blob_bytes: int
    snapshots: int
    snapshot_bytes: int
    steps: int
    scratch: int = 0  # step dirs under snapshots/.work (and .tmp), live or orphaned
    scratch_bytes: int = 0
    orphaned: int = 0  # of those, the ones no live process holds (a killed build's)


@dataclass(frozen=True, slots=True)
class PruneResult:
    steps_removed: int
    blobs_removed: int
    snapshots_removed: int
    bytes_freed: int
    orphans_removed: int = 0
    tasks_removed: int = 0  # task results (cache/task_store.py)


@contextlib.contextmanager
def using(store: LocalStore) -> Iterator[None]:
    """Held by a build for its whole run, so a prune never takes what the build uses.
    Entering it reclaims what killed builds left: their step dirs, which no process holds."""
    reclaim_legacy(store, exclusive_only=True)
    with file_lock(store.root / GC_LOCK, shared=True):
        reclaim_unheld(store.root / WORK_DIR)
        yield


def reclaim_legacy(store: LocalStore, *, exclusive_only: bool) -> tuple[int, int]:
    """Step dirs of an older version (snapshots/.tmp), which it never locked: any secret
    file in them goes at once (its plaintext must not outlive the build); the dirs go when no
    build holds the cache (an older build may still be using one), or when we hold it
    exclusively already (prune). Returns (dirs, bytes) removed."""
    legacy = store.root / LEGACY_TMP_DIR
    if not legacy.is_dir():
        return 0, 0
    for secret in legacy.glob("*/secret-*"):
        with contextlib.suppress(OSError):
            secret.unlink()
    if not exclusive_only:
        return _remove_legacy(legacy)
    try:
        with file_lock(store.root / GC_LOCK, wait=False):
            return _remove_legacy(legacy)
    except BlockingIOError:
        return 0, 0  # a build is running: the next start-up alone, or prune, takes them


def _remove_legacy(legacy: Path) -> tuple[int, int]:
    dirs = [path for path in legacy.iterdir() if path.is_dir() and not path.is_symlink()]
    freed = sum(tree_size(path) for path in dirs)
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(legacy, ignore_errors=True)
    return len(dirs), freed


def parse_size(text: str) -> int:
    number = text.strip().lower().rstrip()
    digits = number.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = number[len(digits) :].strip()
    if not digits or unit not in UNITS:
        raise InputError(f"invalid size {text!r} (e.g. 10GB, 500MiB)")
    return int(float(digits) * UNITS[unit])


def parse_duration(text: str) -> float:
    value, unit = text.strip()[:-1], text.strip()[-1:].lower()
    if unit not in DURATIONS or not value.replace(".", "", 1).isdigit():
        raise InputError(f"invalid duration {text!r} (e.g. 36h, 7d, 30m)")
    return float(value) * DURATIONS[unit]


def usage(store: LocalStore) -> Usage:
    blobs = list(_blob_files(store))
    snapshots = _snapshot_sizes(store)
    steps = list(_step_files(store))
    scratch = [
        path
        for parent in (store.root / WORK_DIR, store.root / LEGACY_TMP_DIR)
        if parent.is_dir()
        for path in parent.iterdir()
        if path.is_dir() and not path.is_symlink()
    ]
    orphans = [path.name for path in unheld_dirs(store.root / WORK_DIR)]
    legacy = store.root / LEGACY_TMP_DIR
    orphans += [path.name for path in scratch if path.parent == legacy]
    return Usage(
        len(blobs),
        sum(p.stat().st_size for p in blobs),
        len(snapshots),
        sum(snapshots.values()),
        len(steps),
        len(scratch),
        sum(tree_size(path) for path in scratch),
        len(orphans),
    )


def prune(
    store: LocalStore, *, older_than: float | None = None, keep_storage: int | None = None
) -> PruneResult:
    """Forget step records older than `older_than` seconds (by last use), then the oldest
    until what stays fits in `keep_storage` bytes; delete every blob and snapshot that no tag
    and no remaining record reaches."""
    with file_lock(store.root / GC_LOCK):
        orphans, orphan_bytes = reclaim_unheld(store.root / WORK_DIR)
        legacy, legacy_bytes = reclaim_legacy(store, exclusive_only=False)
        records = sorted(_step_files(store), key=lambda p: p.stat().st_mtime)
        removed = 0
        if older_than is not None:
            cutoff = time.time() - older_than
            for path in [p for p in records if p.stat().st_mtime < cutoff]:
                path.unlink()
                removed += 1
            records = [p for p in records if p.exists()]
        snapshot_sizes = _snapshot_sizes(store)
        if keep_storage is not None:
            while records and _kept_bytes(store, snapshot_sizes) > keep_storage:
                records.pop(0).unlink()
                removed += 1
        blobs, snapshots = _reachable(store)
        freed = blobs_removed = snapshots_removed = 0
        for path in _blob_files(store):
            if "sha256:" + path.name not in blobs:
                freed += path.stat().st_size
                path.unlink()
                blobs_removed += 1
        for diff_id, size in snapshot_sizes.items():
            if diff_id not in snapshots:
                shutil.rmtree(store.root / "snapshots" / diff_id.removeprefix("sha256:"))
                freed += size
                snapshots_removed += 1
        freed += orphan_bytes + legacy_bytes + _remove_kept_roots(store)
        budget = (
            None
            if keep_storage is None
            else max(0, keep_storage - _kept_bytes(store, _snapshot_sizes(store)))
        )
        tasks, task_bytes = TaskStore(store.root / "tasks").prune(  # tasks (issue 15)
            older_than=older_than, keep_bytes=budget
        )
        freed += task_bytes
        return PruneResult(
            removed, blobs_removed, snapshots_removed, freed, orphans + legacy, tasks
        )


def _remove_kept_roots(store: LocalStore) -> int:
    """The chroot isolation's kept templates: only a speed-up, and no build holds one while
    prune holds the cache exclusively. Returns the bytes freed."""
    kept = store.root / KEPT_ROOTS_DIR
    if not kept.is_dir():
        return 0
    size = tree_size(kept)
    shutil.rmtree(kept, ignore_errors=True)
    return size


def _kept_bytes(store: LocalStore, snapshot_sizes: dict[str, int]) -> int:
    blobs, snapshots = _reachable(store)
    blob_bytes = sum(
        store.blob_path(digest).stat().st_size for digest in blobs if store.has_blob(digest)
    )
    return blob_bytes + sum(
        size for diff_id, size in snapshot_sizes.items() if diff_id in snapshots
    )


def _reachable(store: LocalStore) -> tuple[set[str], set[str]]:
    """Digests of blobs and diff_ids of snapshots that tags or step records reach (the unpacked
    layers of a tagged image too: `image import` and `pull` unpack them for the builds to come)."""
    blobs: set[str] = set()
    diff_ids: set[str] = set()
    pending = [image.descriptor for image in store.images()] if store.index_path.exists() else []
    while pending:
        descriptor = pending.pop()
        if descriptor.digest in blobs or not store.has_blob(descriptor.digest):
            continue
        blobs.add(descriptor.digest)
        try:
            document = parse_document(store.read_blob(descriptor.digest), descriptor.media_type)
        except (CacheError, InputError):
            continue  # a layer or config blob, or unreadable: nothing below it
        if isinstance(document, Index):
            pending.extend(document.manifests)
        elif isinstance(document, Manifest):
            blobs.add(document.config.digest)
            blobs.update(layer.digest for layer in document.layers)
            with contextlib.suppress(CacheError, OSError):  # a tagged image keeps its snapshots:
                diff_ids.update(store.read_config(document).diff_ids)  # builds FROM it use them
    index = StepIndex(store.root / "steps")
    for path in _step_files(store):
        with contextlib.suppress(CacheError):
            record = index.get(path.stem, touch=False)
            if record is None:
                continue
            for layer in record.layers:
                blobs.add(layer.descriptor.digest)
                diff_ids.add(layer.diff_id)
    blobs |= _compressed_copies(store, blobs)
    return blobs, diff_ids


def _compressed_copies(store: LocalStore, kept: set[str]) -> set[str]:
    """Remembered compressed copies of kept layers stay too (pushes reuse them)."""
    found = set()
    for memo in (store.root / "compressed").glob("*/*"):
        if "sha256:" + memo.name in kept:
            with contextlib.suppress(OSError, ValueError, KeyError):
                found.add(Descriptor.from_dict(json.loads(memo.read_bytes())).digest)
    return found


def _blob_files(store: LocalStore) -> Iterator[Path]:
    directory = store.root / "blobs" / "sha256"
    if directory.is_dir():
        yield from (path for path in directory.iterdir() if path.is_file())


def _step_files(store: LocalStore) -> Iterator[Path]:
    directory = store.root / "steps"
    if directory.is_dir():
        yield from directory.glob("*/*.json")


def _snapshot_sizes(store: LocalStore) -> dict[str, int]:
    sizes = {}
    directory = store.root / "snapshots"
    if not directory.is_dir():
        return sizes
    for snapshot in directory.iterdir():
        if snapshot.name.startswith(".") or not snapshot.is_dir():
            continue
        total = 0
        for root, _dirs, files in os.walk(snapshot):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
        sizes["sha256:" + snapshot.name] = total
    return sizes
