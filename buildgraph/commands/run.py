"""`buildgraph run`: every requested target of a Buildfile in one graph, built once, in parallel."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildgraph.cache.builds import BuildRecords
from buildgraph.cache.local import LocalStore
from buildgraph.cache.prune import using
from buildgraph.cache.steps import StepIndex, StepRecord
from buildgraph.commands.cluster import ClusterOptions, dask_executor, require_remote_cache
from buildgraph.commands.compile import STAT_CACHE, ClientFactory, Compiled, compile_project
from buildgraph.commands.export import Exported, export_target, mount_cache
from buildgraph.errors import BuildgraphError, CacheError, StepFailed
from buildgraph.frontend.buildfile import Project
from buildgraph.graph.explain import summarize
from buildgraph.graph.lower import BuildPlan
from buildgraph.graph.model import BuildGraph, Target, build_graph
from buildgraph.graph.steps import CopyStep, RunStep, check_entitlements
from buildgraph.image.oci import Descriptor
from buildgraph.solver.events import EventSink, LogEvent
from buildgraph.solver.facts import gather_and_plan
from buildgraph.solver.outcome import Outcome
from buildgraph.solver.remote import remote_session
from buildgraph.solver.scheduler import execute
from buildgraph.worker.execute import Worker
from buildgraph.worker.local_executor import LocalExecutor
from buildgraph.worker.phases import PhaseSink
from buildgraph.worker.snapshot import SnapshotStore


@dataclass(frozen=True, slots=True)
class TargetResult:
    name: str
    key: str  # the target's last step
    steps: tuple[str, ...]  # every step the target needs
    built: int
    cached: int
    image: Descriptor | None  # None when it failed or was skipped
    tags: tuple[str, ...]
    error: str = ""
    seconds: float = 0.0  # from the start of the run until the target was exported
    note: str = ""  # e.g. that it was pushed without being tagged locally


@dataclass(frozen=True, slots=True)
class RunResult:
    targets: tuple[TargetResult, ...]
    outcome: Outcome
    graph: BuildGraph
    seconds: float
    warnings: tuple[str, ...] = ()
    downloaded: int = 0  # bytes of layers fetched from the remote cache
    exported: int = 0  # steps exported to the remote cache


def _run_project(
    project: Project,
    names: Sequence[str],
    *,
    store: LocalStore,
    client: ClientFactory,
    sink: EventSink,
    jobs: int,
    epoch: int | None,
    no_cache: bool = False,
    keep_going: bool = False,
    push_all: bool = False,
    always_pull: bool = False,
    network: str = "host",
    cache_from: str | None = None,
    cache_to: str | None = None,
    cache_required: bool = False,
    export_cached: bool = False,
    allow: frozenset[str] = frozenset(),
    isolation: str = "auto",
    warn: Callable[[str], None] = lambda _: None,
    compression: str = "gzip",
    phases: PhaseSink | None = None,
    cluster: ClusterOptions | None = None,
) -> RunResult:
    """Gather facts and compile → plan → execute (each target exported as soon as it is done)
    → report. `export_cached` (warm --build): also export the steps this run did not build,
    where the export repository lacks them."""
    start = time.monotonic()
    store.ensure()
    compiled = compile_project(project, names, store=store, client=client, always_pull=always_pull)
    for lowered in compiled.plans.values():
        check_entitlements(lowered.steps.values(), allow)
    steps = build_graph(lowered.steps for lowered in compiled.plans.values())
    finals = [lowered.target.key for lowered in compiled.plans.values()]
    min_mode = project.cache.mode != "max"
    remote = remote_session(
        store,
        client,
        source=cache_from if cache_from is not None else project.cache.remote,
        target=cache_to if cache_to is not None else project.cache.remote,
        warn=warn,
        required=cache_required,
        export_only=_image_entries(steps, finals) if min_mode else None,
        layers_early=_image_steps(steps, finals) if min_mode else None,
    )
    if cluster is not None:  # before anything is looked up: one line, exit 2
        require_remote_cache(remote)
    # An export that pushes by mounting from the remote cache needs no layers here: the
    # plan then does not fetch the layers of its last step for it.
    graph = steps.with_targets(
        Target(
            name,
            lowered.target.key,
            mount_cache(project.target(name), push_all, remote) is not None,
        )
        for name, lowered in compiled.plans.items()
    )
    index = StepIndex(store.root / "steps")
    planned, local = gather_and_plan(
        graph, index=index, store=store, remote=remote, no_cache=no_cache
    )
    worker = Worker(
        store=store,
        snapshots=SnapshotStore(store.root / "snapshots"),
        ignores=compiled.ignores,
        epoch=epoch,
        output=lambda title, data: sink.emit(LogEvent(title, data)),
        network=network,
        secrets=_secrets(project, compiled),
        fetch_layers=remote.ensure_layers if remote else None,
        isolation=isolation,
        phases=phases,
    )
    exports = {
        name: functools.partial(
            export_target,
            project.target(name),
            lowered,
            store=store,
            client=client,
            epoch=epoch,
            push_all=push_all,
            remote=remote,
            compression=compression,
        )
        for name, lowered in compiled.plans.items()
    }
    executor = LocalExecutor(
        worker, index, remote, local.records, lambda target, record: exports[target.name](record)
    )
    if isinstance(getattr(sink, "targets", None), dict):  # the json renderer names targets
        sink.targets.update(step_targets(graph))  # type: ignore[attr-defined]
    worker_exports = 0
    try:
        if cluster is None:
            outcome = execute(
                planned, executor=executor, sink=sink, jobs=jobs, keep_going=keep_going
            )
        else:
            options = dict(sink=sink, epoch=epoch, network=network, isolation=isolation, jobs=jobs)
            with dask_executor(cluster, executor, ignores=compiled.ignores, **options) as (
                remote_executor,
                slots,
            ):
                outcome = execute(
                    planned, executor=remote_executor, sink=sink, jobs=slots, keep_going=keep_going
                )
                worker_exports = remote_executor.exported  # the workers export what they build
    finally:
        worker.close()  # the chroot isolation's roots
    built = set(outcome.records) - outcome.cached
    if export_cached and remote is not None:
        remote.export_cached(_cached_records(graph, outcome, index, built))
    finished = [n for n, p in compiled.plans.items() if p.target.key in outcome.records]
    record_builds(compiled, graph, store, finished)
    compiled.stat_cache.save(store.root / STAT_CACHE)
    results = [
        _target_result(name, lowered, graph, outcome, built, start)
        for name, lowered in compiled.plans.items()
    ]
    if remote is not None:
        remote.finish()
    return RunResult(
        tuple(results),
        outcome,
        graph,
        time.monotonic() - start,
        tuple(compiled.warnings),
        remote.downloaded if remote else 0,
        (len(remote.exported) if remote else 0) + worker_exports,
    )


def _secrets(project: Project, compiled: Compiled) -> dict[str, Path]:
    """Secret id -> host file, for every target of the run (`RUN --mount=type=secret`)."""
    return {
        secret_id: Path(source)
        for name in compiled.plans
        for secret_id, source in project.target(name).secrets
    }


def _cached_records(
    graph: BuildGraph, outcome: Outcome, index: StepIndex, built: set[str]
) -> dict[str, StepRecord]:
    """The records of the graph's steps this run did not build: those it used, and those
    below a cached step that the local store still holds."""
    records = {}
    for key in graph.steps:
        if key in built:
            continue
        record = outcome.records.get(key)
        if record is None:
            try:
                record = index.get(key, touch=False)
            except CacheError:
                continue  # a corrupt record is rebuilt when a run needs it, not exported
        if record is not None:
            records[key] = record
    return records


def _image_entries(graph: BuildGraph, finals: Sequence[str]) -> set[str]:
    """Mode min's entries, what BuildKit's min mode keeps: each target's last step, and each
    step on the targets' own lines that adds a layer (RUN, COPY, ADD), so that a change near
    the end of a Dockerfile still finds the layers below it."""
    layered = {
        key
        for key in _image_steps(graph, finals)
        if isinstance(graph.steps[key], RunStep | CopyStep)
    }
    return layered | set(finals)


def _image_steps(graph: BuildGraph, finals: Sequence[str]) -> set[str]:
    """The steps whose layers the targets' images hold: each target's own line of steps."""
    return {key for final in finals for key in graph.chain(final)}


def run_project(project: Project, names: Sequence[str], **options) -> RunResult:
    """Compile and build the targets, holding the cache dir against a concurrent prune."""
    with using(options["store"]):
        return _run_project(project, names, **options)


def record_builds(
    compiled: Compiled, graph: BuildGraph, store: LocalStore, names: Sequence[str]
) -> None:
    """After a run: remember what each finished target's steps read."""
    records = BuildRecords(store.root / "targets")
    for name in names:
        keys = graph.chain(compiled.plans[name].target.key)
        if records.keys(name) == keys:
            continue  # the record already describes these steps: no context walk again
        summaries = [summarize(graph.steps[k], compiled.ignores, compiled.stat_cache) for k in keys]
        records.save(name, keys, summaries)


def _target_result(
    name: str, plan: BuildPlan, graph: BuildGraph, outcome: Outcome, built: set[str], start: float
) -> TargetResult:
    key = plan.target.key
    steps = tuple(sorted(graph.needed_by(key)))
    ran = sum(1 for step in steps if step in built)
    done = outcome.exported.get(name)
    if done is None:
        keys = (*steps, name)  # a failed export is recorded under the target's name
        failed = [outcome.failures[k] for k in keys if k in outcome.failures]
        error = str(failed[0]) if failed else "skipped: a step it needs failed"
        return TargetResult(name, key, steps, ran, 0, None, (), error)
    assert isinstance(done, Exported)
    cached = len(steps) - ran
    seconds = done.finished - start
    return TargetResult(
        name, key, steps, ran, cached, done.image, done.tags, "", seconds, done.note
    )


def raise_for_failures(result: RunResult) -> None:
    """One error naming the first failure and the targets it broke, after all else finished."""
    failures = result.outcome.failures
    if not failures:
        return
    key, first = next(iter(failures.items()))
    broken = [t.name for t in result.targets if key in t.steps or key == t.name]
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    message = f"target {', '.join(broken) or '?'}: {first.args[0]}{more}"
    error = type(first)(message, first.where) if isinstance(first, BuildgraphError) else None
    raise error if error is not None else StepFailed(message)


def step_targets(graph: BuildGraph) -> dict[str, list[str]]:
    """Step key -> every target it serves (for progress events)."""
    served: dict[str, list[str]] = {}
    for target in graph.targets:
        for key in graph.needed_by(target.key):
            served.setdefault(key, []).append(target.name)
    return served


def default_jobs() -> int:
    return os.cpu_count() or 2
