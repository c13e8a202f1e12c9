"""`buildgraph build`: one Dockerfile and its context in, an image in the store (and beyond) out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from buildgraph.cache.assemble import assemble_image
from buildgraph.cache.local import LocalStore
from buildgraph.cache.prune import using
from buildgraph.cache.steps import StepIndex, StepRecord
from buildgraph.commands.compile import ClientFactory, base_resolver, relocate
from buildgraph.commands.export import export_output
from buildgraph.commands.request import BuildRequest
from buildgraph.errors import InputError, StepFailed
from buildgraph.frontend.dockerfile import parse_dockerfile
from buildgraph.frontend.ignore import IgnoreMatcher, load_dockerignore
from buildgraph.graph.context import StatCache
from buildgraph.graph.lower import BuildPlan, StagePlan, lower_dockerfile
from buildgraph.graph.model import build_graph
from buildgraph.graph.steps import check_entitlements
from buildgraph.graph.urls import url_fetcher
from buildgraph.image.oci import Descriptor
from buildgraph.registry.reference import parse_reference
from buildgraph.solver.events import EventSink, LogEvent, StepEvent, StepState
from buildgraph.solver.facts import gather_and_plan
from buildgraph.solver.outcome import Outcome
from buildgraph.solver.plan import Action, Plan
from buildgraph.solver.remote import RemoteSession, remote_session

if TYPE_CHECKING:
    from buildgraph.worker.phases import PhaseSink


@dataclass(frozen=True, slots=True)
class BuildResult:
    image: Descriptor
    tags: tuple[str, ...]
    outcome: Outcome
    plan: BuildPlan
    pushed: Mapping[str, str] = field(default_factory=dict)  # tag -> manifest digest there


def parse_secret(text: str) -> tuple[str, Path]:
    """`--secret id=ID,src=FILE` (also `source=`, or `env=VAR` read into a temp-less value)."""
    fields = dict(item.partition("=")[::2] for item in text.split(","))
    secret_id = fields.get("id", "")
    source = fields.get("src") or fields.get("source") or ""
    if not secret_id or not source:
        raise InputError(f"invalid --secret {text!r}: expected id=ID,src=FILE")
    path = Path(source)
    if not path.is_file():
        raise InputError(f"--secret {secret_id}: no such file {source}")
    return secret_id, path


def _build(
    request: BuildRequest,
    *,
    store: LocalStore,
    client: ClientFactory,
    sink: EventSink,
    epoch: int | None,
    phases: PhaseSink | None = None,
) -> BuildResult:
    dockerfile_path = request.dockerfile
    if not request.context.is_dir():
        raise InputError(f"build context {request.context} is not a directory")
    if not dockerfile_path.is_file():
        raise InputError(f"Dockerfile {dockerfile_path} not found")
    dockerfile = parse_dockerfile(dockerfile_path)
    context = request.context.resolve()
    ignore = load_dockerignore(context, dockerfile_path)
    store.ensure()
    plan = lower_dockerfile(
        dockerfile,
        target=request.target,
        build_args=request.build_args,
        context=context,
        ignore=ignore,
        resolve_base=base_resolver(store, client, request.platform, always_pull=request.pull),
        stat_cache=(stat_cache := StatCache.load(store.root / "statcache.json")),
        platform=request.platform,
        fetch_url=url_fetcher(store.root / "downloads"),
    )
    stat_cache.save(store.root / "statcache.json")
    check_entitlements(plan.steps.values(), request.allow)
    index = StepIndex(store.root / "steps")
    remote = remote_session(
        store,
        client,
        source=request.cache_from,
        target=request.cache_to,
        warn=lambda text: sink.emit(LogEvent("remote cache", f"warning: {text}\n".encode())),
        required=False,
        export_only=None,
    )
    graph = build_graph([plan.steps])  # no targets: its last step's image is tagged below
    planned, local = gather_and_plan(
        graph, index=index, store=store, remote=remote, no_cache=request.no_cache
    )
    if planned.nothing_to_do():
        outcome = _already_built(planned, local.records, index, sink)
    else:
        outcome = _run_steps(
            request,
            planned,
            local.records,
            store=store,
            remote=remote,
            sink=sink,
            epoch=epoch,
            index=index,
            ignores={str(context): ignore},
            phases=phases,
        )
    if remote is not None:
        remote.finish()
    if outcome.failures:
        first = next(iter(outcome.failures.values()))
        raise first if isinstance(first, StepFailed) else relocate(first, None)
    record = outcome.records[plan.target.key]
    image = assemble_image(store, _labelled(plan.target, request.labels), record, epoch=epoch)
    tags = _tag(store, image, request.tags)
    for spec in request.outputs:
        export_output(store, image, tags, spec, client, dockerfile_path, request.compression)
    pushed = {}
    if request.push:
        from buildgraph.cache.transfer import push

        for tag in tags:
            stored = store.resolve(tag)
            assert stored is not None
            # The registry's digest differs from the store's: layers are compressed to go.
            ref = parse_reference(tag)
            pushed[tag] = push(client(), store, stored, ref, compression=request.compression)
    return BuildResult(image, tags, outcome, plan, pushed)


def _labelled(target: StagePlan, labels: Mapping[str, str]) -> StagePlan:
    """`--label`s on top of the Dockerfile's LABELs, as `docker build --label` adds them: in
    the image config only, never in a step's key."""
    if not labels:
        return target
    merged = dict(target.config.labels) | dict(labels)
    config = replace(target.config, labels=tuple(sorted(merged.items())))
    return replace(target, config=config)


def _already_built(
    plan: Plan, records: Mapping[str, StepRecord], index: StepIndex, sink: EventSink
) -> Outcome:
    """The outcome of a build whose plan has nothing to do: every step it needs is cached here
    with its layers, so the scheduler and worker are never imported (a no-op rebuild is then
    mostly interpreter start-up)."""
    cached = plan.keys(Action.USE_LOCAL)
    for key in cached:  # what the scheduler would report: the local hits
        index.touch(key)
        sink.emit(StepEvent(key, StepState.CACHED, plan.graph.title(key)))
    unneeded = frozenset(plan.keys(Action.NOT_NEEDED))
    return Outcome(
        {key: records[key] for key in cached}, {}, (), frozenset(cached), unneeded=unneeded
    )


def _run_steps(
    request: BuildRequest,
    plan: Plan,
    records: Mapping[str, StepRecord],
    *,
    store: LocalStore,
    remote: RemoteSession | None,
    sink: EventSink,
    epoch: int | None,
    index: StepIndex,
    ignores: dict[str, IgnoreMatcher],
    phases: PhaseSink | None = None,
) -> Outcome:
    """Execute the plan's steps (cache, remote cache, worker) and wait for the outcome."""
    from buildgraph.solver.scheduler import execute
    from buildgraph.worker.execute import Worker
    from buildgraph.worker.local_executor import LocalExecutor
    from buildgraph.worker.snapshot import SnapshotStore

    worker = Worker(
        store=store,
        snapshots=SnapshotStore(store.root / "snapshots"),
        ignores=ignores,
        epoch=epoch,
        output=lambda title, data: sink.emit(LogEvent(title, data)),
        network=request.network,
        secrets=request.secrets,
        fetch_layers=remote.ensure_layers if remote else None,
        isolation=request.isolation,
        phases=phases,
    )
    executor = LocalExecutor(worker, index, remote, records)
    try:
        outcome = execute(plan, executor=executor, sink=sink, jobs=request.jobs)
    finally:
        worker.close()  # the chroot isolation's roots
    if remote is not None:
        (last,) = plan.graph.results()
        record = outcome.records.get(last)
        if record is not None:  # the image is tagged here: its layers must be here
            remote.ensure_layers(record)
    return outcome


def build(request: BuildRequest, **options) -> BuildResult:
    """Build one Dockerfile, holding the cache dir against a concurrent prune."""
    with using(options["store"]):
        return _build(request, **options)


def _tag(store: LocalStore, image: Descriptor, tags: Sequence[str]) -> tuple[str, ...]:
    names = []
    for tag in tags:
        ref = parse_reference(tag)
        store.tag(ref.familiar, str(ref), image)
        names.append(ref.familiar)
    return tuple(names)
