"""The plan: what a run does with each step and why, decided once, from facts, as a value."""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from buildgraph.graph.model import BuildGraph
from buildgraph.graph.steps import CopyStep, RunStep, SourceStep
from buildgraph.solver.events import StepState

NOT_IN_CACHE = "not in the cache"
BELOW_CACHED = "a later step is cached"


class Action(Enum):
    USE_LOCAL = "cached"  # its record (and layers) are in the local cache
    FETCH = "fetch"  # a remote hit whose layers a step built here (or a local image) reads
    USE_REMOTE = "remote"  # a remote hit whose layers nothing here reads: they stay there
    BUILD = "to build"
    NOT_NEEDED = "not needed"  # every use of it goes through a step that comes from a cache

    @property
    def state(self) -> StepState:
        """The progress state `plan` shows for this action."""
        return _STATES[self]


_STATES = {
    Action.USE_LOCAL: StepState.CACHED,
    Action.FETCH: StepState.REMOTE,
    Action.USE_REMOTE: StepState.REMOTE,
    Action.BUILD: StepState.TO_BUILD,
    Action.NOT_NEEDED: StepState.NOT_NEEDED,
}


@dataclass(frozen=True, slots=True)
class StepPlan:
    key: str
    action: Action
    reason: str = ""  # why it is built or not needed
    unusable: bool = False  # built because its cache entry cannot be used (`reason` says why)


@dataclass(frozen=True, slots=True)
class CacheFacts:
    """What the caches hold for a graph, found before planning (see solver/facts.py)."""

    local: frozenset[str] = frozenset()  # usable records in the local cache
    remote: frozenset[str] = frozenset()  # entries in the remote cache
    unusable: Mapping[str, str] = field(default_factory=dict)  # key -> why its entry is not


@dataclass(frozen=True, slots=True)
class Plan:
    graph: BuildGraph
    steps: Mapping[str, StepPlan]  # every step of the graph, inputs first
    files_here: Mapping[str, bool]  # target name -> do its image's files have to be here
    facts: CacheFacts
    no_cache: bool = False

    def action(self, key: str) -> Action:
        return self.steps[key].action

    def keys(self, *actions: Action) -> tuple[str, ...]:
        return tuple(key for key, step in self.steps.items() if step.action in actions)

    def nothing_to_do(self) -> bool:
        """Every needed step is in the local cache with its layers: nothing to build or fetch."""
        return not self.keys(Action.BUILD, Action.FETCH, Action.USE_REMOTE)


def plan(
    graph: BuildGraph,
    *,
    local: Set[str],
    remote: Set[str],
    no_cache: bool = False,
    unusable: Mapping[str, str] | None = None,
) -> Plan:
    """Decide every step's action. `local`: keys with a usable local record; `remote`: keys the
    remote cache holds; `unusable`: entries found but unusable, with why. With `no_cache` only
    FROM steps come from a cache (the base image is not rebuilt).

    A step that no result reaches except through a cached step is not needed (as BuildKit never
    builds below a cached step); a remote hit is fetched only if a RUN or COPY built here, or a
    target that needs its files here, reads it."""
    unusable = dict(unusable or {})
    if no_cache:
        local = {key for key in local if isinstance(graph.steps[key], SourceStep)}
        remote = set()
    facts = CacheFacts(frozenset(local), frozenset(remote), MappingProxyType(unusable))
    available = facts.local | facts.remote
    needed = _needed(graph, available)
    build = {key for key in needed if key not in available}
    files_here = {target.name: not target.mounts_from_cache for target in graph.targets}
    read_here = _read_here(graph, build, files_here)
    steps = {}
    for key in graph.steps:
        if key in facts.local:  # even below a cached step: its record is read already
            steps[key] = StepPlan(key, Action.USE_LOCAL)
        elif key not in needed:
            steps[key] = StepPlan(key, Action.NOT_NEEDED, BELOW_CACHED)
        elif key in facts.remote:
            steps[key] = StepPlan(key, Action.FETCH if key in read_here else Action.USE_REMOTE)
        else:
            why = unusable.get(key)
            steps[key] = StepPlan(key, Action.BUILD, why or NOT_IN_CACHE, why is not None)
    return Plan(graph, MappingProxyType(steps), MappingProxyType(files_here), facts, no_cache)


def replan(old: Plan, key: str, reason: str) -> Plan:
    """The plan once the cache entry of `key` turned out unusable: it is built, and whatever
    it needs that was not needed before now is."""
    facts = old.facts
    return plan(
        old.graph,
        local=facts.local - {key},
        remote=facts.remote - {key},
        no_cache=old.no_cache,
        unusable={**facts.unusable, key: reason},
    )


def needed_steps(graph: BuildGraph, available: Set[str]) -> set[str]:
    """Steps a result needs: reached from a result without passing through an available one."""
    return _needed(graph, available)


def _needed(graph: BuildGraph, available: Set[str]) -> set[str]:
    needed: set[str] = set()
    stack = list(graph.results())
    while stack:
        key = stack.pop()
        if key in needed:
            continue
        needed.add(key)
        if key not in available:  # built: every input is needed
            stack.extend(graph.inputs[key])
    return needed


def _read_here(graph: BuildGraph, build: Set[str], files_here: Mapping[str, bool]) -> set[str]:
    """Steps whose files something here reads: the inputs of a RUN or COPY built here, and the
    last step of a target whose image is tagged or written here."""
    read = {target.key for target in graph.targets if files_here[target.name]}
    if not graph.targets:  # `build` without targets: its result is tagged here
        read.update(key for key in graph.steps if not graph.consumers[key])
    for key in build:
        if isinstance(graph.steps[key], RunStep | CopyStep):
            read.update(graph.inputs[key])
    return read
