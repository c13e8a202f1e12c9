"""What each target's steps read the last time it was built, for `plan` to explain misses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import xxhash

from buildgraph.fs import atomic_write

# graph.explain.Summary: what a step read, by name. Only stored here as JSON, so the store
# needs the shape, not the graph layer above it.
Summary = dict[str, Any]


class BuildRecords:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    def _path(self, target: str) -> Path:
        return self.root / f"{xxhash.xxh3_64_hexdigest(target.encode())}.json"

    def save(self, target: str, keys: list[str], chain: list[Summary]) -> None:
        doc = {"target": target, "keys": keys, "steps": chain}
        atomic_write(self._path(target), json.dumps(doc, sort_keys=True).encode())

    def keys(self, target: str) -> list[str] | None:
        """The step keys the last record was made for (None: no usable record)."""
        try:
            doc = json.loads(self._path(target).read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        keys = doc.get("keys") if isinstance(doc, dict) else None
        return keys if isinstance(keys, list) else None

    def load(self, target: str) -> list[Summary] | None:
        try:
            doc = json.loads(self._path(target).read_bytes())
        except (FileNotFoundError, ValueError):
            return None  # no record (or an unreadable one): "no earlier build"
        steps = doc.get("steps") if isinstance(doc, dict) else None
        return steps if isinstance(steps, list) else None
