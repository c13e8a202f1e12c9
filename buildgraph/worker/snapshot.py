"""Snapshots: each layer unpacked once under cache/snapshots/, then a read-only overlay lower."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from buildgraph.cache.local import LocalStore
from buildgraph.errors import CacheError
from buildgraph.fs import file_lock, held_dir
from buildgraph.image.oci import Descriptor
from buildgraph.image.unpack import unpack_layer

WORK_DIR = ".work"  # step and unpack dirs, each flock'ed by its process (see fs.held_dir)
LEGACY_TMP_DIR = ".tmp"  # where versions before issue 16 put them, unlocked


class SnapshotStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    def path(self, diff_id: str) -> Path:
        return self.root / diff_id.removeprefix("sha256:")

    def has(self, diff_id: str) -> bool:
        return self.path(diff_id).is_dir()

    @contextlib.contextmanager
    def scratch(self, prefix: str = "step-") -> Iterator[Path]:
        """A temp dir on the snapshots' filesystem (so renames into place are atomic), held
        by this process: if it is killed, the next build or `cache prune` reclaims it."""
        with held_dir(self.root / WORK_DIR, prefix) as path:
            yield path

    def ensure(self, store: LocalStore, layer: Descriptor, diff_id: str) -> Path:
        """The unpacked snapshot of `layer`, unpacking it first if this is its first use."""
        final = self.path(diff_id)
        if final.is_dir():
            return final
        # One unpack per layer even when several steps (or processes) need it at once.
        with file_lock(self.root / ".locks" / diff_id.removeprefix("sha256:")):
            if final.is_dir():
                return final
            return self._unpack(store, layer, diff_id)

    def _unpack(self, store: LocalStore, layer: Descriptor, diff_id: str) -> Path:
        with self.scratch("unpack-") as scratch:
            tree = scratch / "tree"
            tree.mkdir()
            with store.open_blob(layer.digest) as blob:
                found = unpack_layer(blob, layer.media_type, tree, whiteouts="overlay")
            if found != diff_id:
                raise CacheError(f"corrupt layer {layer.digest}: its tar is {found}, not {diff_id}")
            return self.adopt(tree, diff_id)

    def adopt(self, tree: Path, diff_id: str) -> Path:
        """Move an unpacked tree (e.g. a RUN step's overlay upper dir) into place."""
        final = self.path(diff_id)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tree, final)
        except OSError:
            if not final.is_dir():  # not "another process put it there first"
                raise
        return final
