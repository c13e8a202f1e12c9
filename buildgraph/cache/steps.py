"""The step index: cache key -> what the finished step left (its image's layers and history)."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from buildgraph.errors import CacheError, Location
from buildgraph.fs import atomic_write
from buildgraph.image.config import HistoryEntry
from buildgraph.image.oci import Descriptor, canonical_json


class HasBlobs(Protocol):
    def has_blob(self, digest: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class LayerRef:
    descriptor: Descriptor  # the compressed blob in the store
    diff_id: str  # sha256 of the uncompressed tar: names the snapshot


@dataclass(frozen=True, slots=True)
class StepRecord:
    """The image as it stands after a step: every layer and history entry from the base up."""

    layers: tuple[LayerRef, ...]
    history: tuple[HistoryEntry, ...]

    def missing_layers(self, store: HasBlobs) -> list[Descriptor]:
        """The distinct layer blobs of this image that `store` does not hold (a record taken
        from a remote cache keeps its layers there until something needs them)."""
        wanted = {layer.descriptor.digest: layer.descriptor for layer in self.layers}
        return [blob for digest, blob in wanted.items() if not store.has_blob(digest)]

    def to_json(self) -> bytes:
        return canonical_json(
            {
                "layers": [
                    {"descriptor": ref.descriptor.to_dict(), "diff_id": ref.diff_id}
                    for ref in self.layers
                ],
                "history": [entry.to_dict() for entry in self.history],
            }
        )

    @classmethod
    def from_json(cls, data: bytes) -> StepRecord:
        doc = json.loads(data)
        layers = tuple(
            LayerRef(Descriptor.from_dict(item["descriptor"]), item["diff_id"])
            for item in doc["layers"]
        )
        history = tuple(HistoryEntry.from_dict(item) for item in doc["history"])
        return cls(layers, history)


class StepIndex:
    """One small JSON file per key under cache/steps/; written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str, *, touch: bool = True) -> StepRecord | None:
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if touch:  # last use, for `cache prune --older-than` (a look by prune is no use)
            self.touch(key)
        try:
            return StepRecord.from_json(data)
        except (ValueError, KeyError, TypeError) as err:
            raise CacheError(f"corrupt step record: {err}", Location(path)) from err

    def has(self, key: str) -> bool:
        """Whether a record is stored (read nothing: a corrupt one is found when it is read)."""
        return self.path(key).is_file()

    def touch(self, key: str) -> None:
        """Mark the record used now (what `cache prune --older-than` goes by)."""
        with contextlib.suppress(OSError):
            os.utime(self.path(key))

    def put(self, key: str, record: StepRecord) -> None:
        # No fsync: the rename is atomic, and a record torn by a crash reads as corrupt and
        # is rebuilt; an fsync per step cost more than the steps themselves on slow disks.
        atomic_write(self.path(key), record.to_json(), durable=False)

    def forget(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
