"""Gather what the caches hold for a graph (the only I/O before planning), then plan."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass

from buildgraph.cache.local import LocalStore
from buildgraph.cache.steps import StepIndex, StepRecord
from buildgraph.errors import CacheError
from buildgraph.graph.model import BuildGraph
from buildgraph.graph.steps import SourceStep
from buildgraph.solver.plan import Plan, needed_steps, plan
from buildgraph.solver.remote import RemoteSession


@dataclass(frozen=True, slots=True)
class LocalEntries:
    records: Mapping[str, StepRecord]  # usable local records, read once
    unusable: Mapping[str, str]  # key -> why its local record cannot be used


def read_local(
    graph: BuildGraph,
    *,
    index: StepIndex,
    store: LocalStore,
    layers_elsewhere: bool,
    no_cache: bool,
) -> LocalEntries:
    """Read the local record of every step that has one. A corrupt record is unusable; so is
    one whose layers are not in the local store, unless `layers_elsewhere` (a remote cache
    that can still provide them when something reads them). Read here, before planning, so
    that the plan never counts on an entry the run would find unusable; each record is read
    once (the executor takes them from here)."""
    records: dict[str, StepRecord] = {}
    unusable: dict[str, str] = {}
    present: dict[str, bool] = {}  # blob digest -> in the store: a base's layers are shared
    for key, step in graph.steps.items():
        if no_cache and not isinstance(step, SourceStep):
            continue
        try:
            record = index.get(key, touch=False)
        except CacheError as err:
            unusable[key] = str(err)
            continue
        if record is None:
            continue
        missing = None if layers_elsewhere else _first_missing(record, store, present)
        if missing is not None:
            unusable[key] = f"layer {missing[:19]} not in the local store"
            continue
        records[key] = record
    return LocalEntries(records, unusable)


def _first_missing(record: StepRecord, store: LocalStore, present: dict[str, bool]) -> str | None:
    for layer in record.layers:
        digest = layer.descriptor.digest
        if digest not in present:
            present[digest] = store.has_blob(digest)
        if not present[digest]:
            return digest
    return None


Lookup = Callable[[Iterable[str]], Set[str]]  # keys -> the ones the remote cache holds


def look_up_remote(graph: BuildGraph, local: Set[str], lookup: Lookup) -> set[str]:
    """The remote hits among the steps a result may need, found in two rounds of parallel
    manifest GETs: first the results missing here (when they hit, nothing below them is
    needed: a fully cached graph costs one GET per target), then every step that the misses
    among them may need."""
    hits = set(lookup(key for key in graph.results() if key not in local))
    needed = needed_steps(graph, local | hits)
    hits |= lookup(key for key in graph.steps if key in needed and key not in local)
    return hits


def _session_lookup(remote: RemoteSession) -> Lookup:
    def lookup(keys: Iterable[str]) -> Set[str]:
        remote.lookup(keys)
        return set(remote.hits)

    return lookup


def gather_and_plan(
    graph: BuildGraph,
    *,
    index: StepIndex,
    store: LocalStore,
    remote: RemoteSession | None,
    no_cache: bool,
) -> tuple[Plan, LocalEntries]:
    """The plan of `graph` against the local and remote caches, and the local records read."""
    layers_elsewhere = remote is not None and remote.source is not None
    entries = read_local(
        graph, index=index, store=store, layers_elsewhere=layers_elsewhere, no_cache=no_cache
    )
    local = set(entries.records)
    hits: set[str] = set()
    if remote is not None and not no_cache:
        found = look_up_remote(graph, local, _session_lookup(remote))
        hits = found & set(remote.hits)  # a registry that failed meanwhile took its hits along
    planned = plan(graph, local=local, remote=hits, no_cache=no_cache, unusable=entries.unusable)
    return planned, entries
