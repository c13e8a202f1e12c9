"""What executing a plan came to (a fully cached `build` makes one without the scheduler)."""

from __future__ import annotations

from dataclasses import dataclass, field

from buildgraph.cache.steps import StepRecord
from buildgraph.errors import BuildgraphError


@dataclass(frozen=True, slots=True)
class Outcome:
    records: dict[str, StepRecord]  # every step that finished (built or cached)
    failures: dict[str, BuildgraphError]  # step key (or target name, for an export) -> why
    skipped: tuple[str, ...]  # not run because something they need failed
    cached: frozenset[str] = frozenset()  # finished from the cache, no work done
    exported: dict[str, object] = field(default_factory=dict)  # target name -> its export
    unneeded: frozenset[str] = frozenset()  # not run, not read: later steps came from a cache
