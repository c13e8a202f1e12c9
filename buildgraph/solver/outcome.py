"""What a run of the step graph came to (no networkx here: a fully cached build needs only this)."""

from __future__ import annotations

from dataclasses import dataclass, field

from buildgraph.cache.steps import StepRecord
from buildgraph.errors import BuildgraphError


@dataclass(frozen=True, slots=True)
class Outcome:
    records: dict[str, StepRecord]  # every step that finished (built or cached)
    failures: dict[str, BuildgraphError]  # key -> why it failed
    skipped: tuple[str, ...]  # not run because something they need failed
    cached: frozenset[str] = frozenset()  # finished from the cache, no work done
    exported: dict[str, object] = field(default_factory=dict)  # export node -> its result
    unneeded: frozenset[str] = frozenset()  # not run, not read: later steps came from a cache
