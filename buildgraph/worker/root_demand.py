"""Which materialized roots the steps still to run will need (the chroot isolation).

A step lays out its parent's tree (RUN, COPY) and reads other stages' trees (COPY --from,
RUN --mount from=). Known from the plan when a build starts, this tells the RootPool which of
its idle roots no step will ask for again, so one can be put back to its template and serve
the next service instead of a new copy (worker/rootfs.py, worker/revert.py).

Roots are known by the layers they hold and steps by their keys: a config step (ENV, CMD...)
holds its parent's layers, so reading its tree is reading the parent's; the layers behind a
key are learned as its record is seen. A key whose record has not been seen yet has no root.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping

from buildgraph.cache.steps import StepRecord
from buildgraph.graph.steps import ConfigStep, CopyStep, RunStep, Step


class RootDemand:
    def __init__(self, steps: Mapping[str, Step], build: Iterable[str]) -> None:
        self._holder: dict[str, str] = {}  # key -> the key whose layers its record holds
        for key, step in steps.items():
            self._holder[key] = (
                self._holder.get(step.parent, step.parent) if isinstance(step, ConfigStep) else key
            )
        self._reads: dict[str, tuple[str, ...]] = {}
        for key in build:
            step = steps[key]
            if isinstance(step, RunStep | CopyStep):
                self._reads[key] = tuple(self._holder.get(read, read) for read in _trees(step))
        self._pending = Counter(read for reads in self._reads.values() for read in reads)
        self._chain_of: dict[str, tuple[str, ...]] = {}  # the layers behind each key seen
        self._keys_of: dict[tuple[str, ...], list[str]] = {}  # and the keys behind each chain
        self._lock = threading.Lock()

    def seen(self, key: str, record: StepRecord) -> None:
        """`record` is the result of `key`: roots of its layers are `key`'s tree."""
        chain = tuple(layer.diff_id for layer in record.layers)
        holder = self._holder.get(key, key)
        with self._lock:
            if holder not in self._chain_of:  # the first record seen stays
                self._chain_of[holder] = chain
                self._keys_of.setdefault(chain, []).append(holder)

    def started(self, key: str) -> None:
        """The step `key` has its trees (its own root taken, the stages it reads borrowed)."""
        with self._lock:
            for read in self._reads.pop(key, ()):
                self._pending[read] -= 1

    def pending(self, chain: tuple[str, ...]) -> int:
        """How many steps still to run need a root of these layers (a step that has taken
        its trees no longer counts)."""
        with self._lock:  # asked under the root pool's lock, for every idle root: no scan
            return sum(self._pending[key] for key in self._keys_of.get(chain, ()))


def _trees(step: RunStep | CopyStep) -> list[str]:
    """The keys whose trees `step` lays out or reads."""
    if isinstance(step, CopyStep):
        return [step.parent, *([step.source.stage_key] if step.source.stage_key else [])]
    return [step.parent, *dict.fromkeys(m.stage_key for m in step.mounts if m.stage_key)]
