"""Run a step graph: cached steps cost nothing, ready steps run in parallel, longest path first."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import networkx as nx

from buildgraph.cache.steps import StepIndex, StepRecord
from buildgraph.errors import (
    BuildgraphError,
    CacheError,
    DigestMismatch,
    RegistryError,
    storage_error,
)
from buildgraph.graph.steps import CopyStep, RunStep, SourceStep, Step
from buildgraph.solver.events import EventSink, StepEvent, StepState
from buildgraph.solver.outcome import Outcome
from buildgraph.solver.remote import RemoteSession
from buildgraph.worker.execute import Worker

FETCH_JOBS = 8  # remote hits whose layers are downloaded at once
Export = Callable[[StepRecord], object]  # what an export node does with its target's record


def add_export(dag: nx.DiGraph, target: str, final_key: str) -> str:
    """The node that tags, outputs and pushes one target once its last step is done."""
    node = f"export:{target}"
    dag.add_node(node, export=target, title=f"[{target}] export")
    dag.add_edge(final_key, node)
    return node


def add_step(dag: nx.DiGraph, key: str, step: Step, inputs: tuple[str, ...]) -> None:
    if key not in dag:  # an equal step from another target is the same node
        dag.add_node(key, step=step)
        dag.add_edges_from((parent, key) for parent in inputs)


def run(
    graph: nx.DiGraph,
    *,
    worker: Worker,
    index: StepIndex,
    sink: EventSink,
    jobs: int,
    no_cache: bool = False,
    keep_going: bool = False,
    remote: RemoteSession | None = None,
    exports: Mapping[str, Export] | None = None,
) -> Outcome:
    """Execute every node of `graph` (edges: input -> step) that a result needs. With `remote`,
    steps missing locally are looked up in the remote cache first, and built steps are exported.

    A step whose every consumer comes from a cache is not needed: a remote hit of that kind is
    not even read, a miss is not built (as BuildKit never builds below a cached step). Should a
    cached step turn out unusable (a corrupt record, a remote blob that fails its digest), the
    inputs it then needs are demanded on the spot and it is built once they are done."""
    steps = [key for key in graph if "step" in graph.nodes[key]]
    local = set() if no_cache else {key for key in steps if index.has(key)}
    if remote is not None and not no_cache:
        look_up_needed(graph, local, remote)
    hits = set(remote.hits) if remote is not None and not no_cache else set()
    pruned = set() if no_cache else not_needed(graph, local | hits) - local
    if remote is not None and hits:
        remote.prefetch(key for key in steps if key in hits and key not in pruned | local)
    priority = _remaining_path_lengths(graph)
    waiting = {key: graph.in_degree(key) for key in graph}
    ready: list[tuple[int, str]] = []
    for key, count in waiting.items():
        if count == 0:
            heapq.heappush(ready, (-priority[key], key))
    records: dict[str, StepRecord] = {}
    failures: dict[str, BuildgraphError] = {}
    skipped: set[str] = set()
    from_cache: set[str] = set()
    exported: dict[str, object] = {}
    fetching: set[str] = set()  # remote hits whose layers are being downloaded
    demanded: set[str] = set()  # pruned steps that a step turned out to need after all
    late: dict[str, list[str]] = {}  # demanded step -> the steps waiting for it
    pending: dict[str, int] = {}  # step -> demanded inputs it still waits for

    def push(key: str) -> None:
        heapq.heappush(ready, (-priority[key], key))

    def release(key: str) -> None:
        for child in graph.successors(key):
            waiting[child] -= 1
            if waiting[child] == 0 and child not in skipped:
                push(child)

    def finish(key: str) -> None:
        for waiter in late.pop(key, ()):
            pending[waiter] -= 1
            if pending[waiter] == 0 and waiter not in skipped:
                push(waiter)
        if key not in demanded:  # a demanded step released its children when it was pruned
            release(key)

    def await_inputs(key: str) -> bool:
        """Demand the inputs of `key` that were pruned; True when it has to wait for them."""
        missing = [parent for parent in graph.predecessors(key) if parent not in records]
        for parent in missing:  # finished without a record: pruned, or demanded already
            late.setdefault(parent, []).append(key)
            if parent not in demanded:
                demanded.add(parent)
                push(parent)
        pending[key] = len(missing)
        return bool(missing)

    def will_build(key: str) -> bool:
        return key not in local and key not in hits and (key not in pruned or key in demanded)

    def skip_below(key: str) -> None:
        for child in nx.descendants(graph, key):
            if child not in skipped and child not in records and child not in exported:
                skipped.add(child)
                sink.emit(
                    StepEvent(
                        child,
                        StepState.SKIPPED,
                        _title(graph, child),
                        reason="an input step failed",
                    )
                )

    # Downloads wait on the network, not on a core: they do not take a build slot.
    with (
        ThreadPoolExecutor(max_workers=max(1, jobs)) as pool,
        ThreadPoolExecutor(max_workers=FETCH_JOBS) as fetch_pool,
    ):
        running: dict[Future[tuple[object, float]], str] = {}
        while ready or running:
            stop = failures and not keep_going
            while ready and not stop:
                _, key = heapq.heappop(ready)
                if "export" in graph.nodes[key]:  # tag/output/push a finished target, in parallel
                    (final,) = graph.predecessors(key)
                    action = (exports or {}).get(key)
                    if action is None:
                        finish(key)
                        continue
                    sink.emit(StepEvent(key, StepState.RUNNING, _title(graph, key)))
                    running[pool.submit(_timed_export, action, records[final])] = key
                    continue
                if key in pruned and key not in demanded:  # a later step comes from a cache
                    if key in hits:
                        sink.emit(StepEvent(key, StepState.REMOTE, _title(graph, key)))
                    release(key)
                    continue
                step: Step = graph.nodes[key]["step"]
                cached = (
                    None
                    if no_cache and not isinstance(step, SourceStep)
                    else _cached(index, key, sink, step)
                )
                if cached is not None and (remote is None or remote.source is None):
                    # A record taken from a remote cache keeps its layers there until they are
                    # needed; with no remote cache now, such a step is built here again.
                    missing = cached.missing_layers(worker.store)
                    if missing:
                        reason = f"layer {missing[0].digest[:19]} not in the local store"
                        sink.emit(
                            StepEvent(key, StepState.TO_BUILD, _title(graph, key), reason=reason)
                        )
                        cached = None
                if cached is not None:
                    records[key] = cached
                    from_cache.add(key)
                    sink.emit(StepEvent(key, StepState.CACHED, _title(graph, key)))
                    finish(key)
                    continue
                found = remote.record(key) if remote is not None and not no_cache else None
                if (
                    found is not None
                    and remote is not None
                    and _files_needed(graph, key, will_build)
                ):
                    # A step that will run on top of it needs its files: fetch them now (and
                    # build the step instead if the remote entry turns out to be unusable).
                    sink.emit(StepEvent(key, StepState.REMOTE, _title(graph, key)))
                    fetching.add(key)
                    running[fetch_pool.submit(_fetch, remote, found)] = key
                    continue
                if found is not None:  # its layers are fetched only when something needs them
                    index.put(key, found)
                    records[key] = found
                    from_cache.add(key)
                    sink.emit(StepEvent(key, StepState.REMOTE, _title(graph, key)))
                    finish(key)
                    continue
                if await_inputs(key):  # built after all: its pruned inputs come first
                    continue
                inputs = {parent: records[parent] for parent in graph.predecessors(key)}
                if remote is not None:  # a push refused shows before the first step runs
                    remote.check_export_access()
                sink.emit(StepEvent(key, StepState.RUNNING, _title(graph, key)))
                running[pool.submit(_timed, worker, step, inputs)] = key
            if not running:
                break
            try:
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:
                # Ctrl-C: kill the running commands, let their steps clean up (no mount, no
                # half-written entry: a failed step records nothing), then stop.
                worker.cancel.set()
                wait(list(running))
                raise
            for future in done:
                key = running.pop(future)
                try:
                    result, seconds = future.result()
                except (BuildgraphError, OSError) as caught:
                    # OSError: the disk refused a layer, snapshot or record (full, read-only)
                    err = caught if isinstance(caught, BuildgraphError) else storage_error(caught)
                    if err is None:
                        raise
                    step = graph.nodes[key].get("step")
                    if err.where is None and step is not None:  # e.g. a tar ADD refuses
                        err.where = getattr(step, "where", None)
                    failures[key] = err
                    sink.emit(StepEvent(key, StepState.FAILED, _title(graph, key), reason=str(err)))
                    skip_below(key)
                    continue
                if key in fetching:
                    fetching.discard(key)
                    if isinstance(result, StepRecord):  # taken from the remote cache as is
                        index.put(key, result)
                        records[key] = result
                        from_cache.add(key)
                        finish(key)
                    else:  # unusable: forget the entry and build the step here
                        assert remote is not None
                        title = _title(graph, key)
                        if remote.source is not None:  # else its outage was reported once
                            remote.warn(
                                f"remote cache entry for {title} is unusable ({result}); "
                                "building it"
                            )
                        remote.forget(key)
                        hits.discard(key)
                        push(key)
                    continue
                if "export" in graph.nodes[key]:
                    exported[key] = result
                    sink.emit(
                        StepEvent(key, StepState.DONE, _title(graph, key), duration_s=seconds)
                    )
                    finish(key)
                    continue
                assert isinstance(result, StepRecord)
                index.put(key, result)
                records[key] = result
                if remote is not None:
                    remote.export(key, result)
                parent = records.get(getattr(graph.nodes[key]["step"], "parent", ""))
                added = parent is not None and len(result.layers) > len(parent.layers)
                size = result.layers[-1].descriptor.size if added else 0
                sink.emit(
                    StepEvent(
                        key, StepState.DONE, _title(graph, key), duration_s=seconds, bytes=size
                    )
                )
                finish(key)
    unneeded = pruned - demanded
    not_run = [
        key
        for key in graph
        if key not in records
        and key not in failures
        and key not in exported
        and key not in unneeded
    ]
    return Outcome(
        records,
        failures,
        tuple(sorted(set(not_run) | skipped)),
        frozenset(from_cache),
        exported,
        frozenset(unneeded),
    )


def look_up_needed(graph: nx.DiGraph, local: set[str], remote: RemoteSession) -> None:
    """Look up in the remote cache every step missing here that a result may need, before
    anything runs, in two rounds of parallel manifest GETs: first the steps the results read
    directly (when they hit, nothing below them is needed: a fully cached graph costs one GET
    per target), then every step that the misses among them may need."""
    results: set[str] = set()
    for node in graph:
        if "export" in graph.nodes[node]:
            results.update(graph.predecessors(node))
        elif graph.out_degree(node) == 0:  # a last step with no export node (build)
            results.add(node)
    remote.lookup(key for key in results if key not in local)
    unneeded = not_needed(graph, local | set(remote.hits))
    remote.lookup(
        key
        for key in graph
        if "step" in graph.nodes[key] and key not in local and key not in unneeded
    )


def not_needed(graph: nx.DiGraph, available: set[str]) -> set[str]:
    """Steps no result needs: every path from them to an export (or a last step) passes
    through a step that comes from a cache."""
    needed: set[str] = set()
    roots = [key for key in graph if "export" in graph.nodes[key] or graph.out_degree(key) == 0]
    stack = list(roots)
    while stack:
        key = stack.pop()
        if key in needed:
            continue
        needed.add(key)
        if key not in available:  # built (or an export): every input is needed
            stack.extend(graph.predecessors(key))
    return {key for key in graph if "step" in graph.nodes[key] and key not in needed}


def _timed(worker: Worker, step: Step, inputs: dict[str, StepRecord]) -> tuple[StepRecord, float]:
    start = time.monotonic()
    record = worker.execute(step, inputs)
    return record, time.monotonic() - start


def _cached(index: StepIndex, key: str, sink: EventSink, step: Step) -> StepRecord | None:
    try:
        return index.get(key)
    except CacheError as err:  # a corrupt entry is rebuilt, not trusted
        sink.emit(StepEvent(key, StepState.TO_BUILD, getattr(step, "title", ""), reason=str(err)))
        index.forget(key)
        return None


def _files_needed(graph: nx.DiGraph, key: str, will_build: Callable[[str], bool]) -> bool:
    """Will something that runs need this step's files (a RUN/COPY to build, a local export)?"""
    for child in graph.successors(key):
        node = graph.nodes[child]
        if "export" in node:
            if node.get("needs_files", True):  # a push that mounts from the cache does not
                return True
            continue
        if will_build(child) and isinstance(node["step"], RunStep | CopyStep):
            return True
    return False


def _fetch(remote: RemoteSession, found: StepRecord) -> tuple[StepRecord | str, float]:
    """The remote record with its layers downloaded, or why they cannot be had intact."""
    try:
        remote.ensure_layers(found)
        return found, -1.0
    except (DigestMismatch, RegistryError) as err:
        return str(err), -1.0


def _timed_export(action: Export, record: StepRecord) -> tuple[object, float]:
    start = time.monotonic()
    result = action(record)
    return result, time.monotonic() - start


def _title(graph: nx.DiGraph, key: str) -> str:
    node = graph.nodes[key]
    return node.get("title") or node["step"].title or key[:12]


def _remaining_path_lengths(graph: nx.DiGraph) -> dict[str, int]:
    """Steps on the longest remaining chain start first, so the critical path never waits."""
    lengths: dict[str, int] = {}
    for key in reversed(list(nx.topological_sort(graph))):
        lengths[key] = 1 + max((lengths[child] for child in graph.successors(key)), default=0)
    return lengths
