"""`buildgraph run`: every requested target of a Buildfile in one graph, built once, in parallel."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx

from buildgraph.cache.builds import BuildRecords
from buildgraph.cache.local import LocalStore, StoredImage
from buildgraph.cache.prune import using
from buildgraph.cache.steps import StepIndex, StepRecord
from buildgraph.commands.build import ClientFactory, base_resolver, compile_graph, export_output
from buildgraph.errors import BuildgraphError, CacheError, InputError, StepFailed
from buildgraph.frontend.buildfile import Project, TargetSpec, select_targets
from buildgraph.frontend.dockerfile import parse_dockerfile
from buildgraph.frontend.ignore import IgnoreMatcher, load_dockerignore
from buildgraph.graph.context import StatCache
from buildgraph.graph.explain import summarize
from buildgraph.graph.lower import BuildPlan, NamedContext, lower_dockerfile
from buildgraph.graph.query import chain
from buildgraph.graph.remote import url_fetcher
from buildgraph.graph.steps import CopyStep, RunStep, check_entitlements
from buildgraph.image.assemble import assemble_image
from buildgraph.image.oci import Descriptor, Platform, default_platform, parse_platform
from buildgraph.registry.reference import Reference, parse_reference
from buildgraph.solver.events import EventSink, LogEvent
from buildgraph.solver.remote import RemoteSession, remote_session
from buildgraph.solver.scheduler import Outcome, add_export, run
from buildgraph.worker.execute import Worker
from buildgraph.worker.phases import PhaseSink
from buildgraph.worker.snapshot import SnapshotStore

STAT_CACHE = "statcache.json"  # in the cache dir


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
class Exported:
    """What a target's export node did."""

    image: Descriptor
    tags: tuple[str, ...]  # the local tags; the pushed references when not tagged locally
    finished: float  # time.monotonic()
    note: str = ""


@dataclass(frozen=True, slots=True)
class RunResult:
    targets: tuple[TargetResult, ...]
    outcome: Outcome
    graph: nx.DiGraph
    seconds: float
    warnings: tuple[str, ...] = ()
    downloaded: int = 0  # bytes of layers fetched from the remote cache
    exported: int = 0  # steps exported to the remote cache


@dataclass
class Compiled:
    plans: dict[str, BuildPlan]  # target name -> its plan
    ignores: dict[str, IgnoreMatcher] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    stat_cache: StatCache = field(default_factory=StatCache)  # one hash per file per run


class _TargetContexts(Mapping[str, NamedContext]):
    """A target's named contexts; tags of other targets resolve to those targets, lowered on
    first use, so `FROM <another target's tag>` never pulls a stale registry copy."""

    def __init__(self, compile_target, spec: TargetSpec, tag_owners: Mapping[str, str]) -> None:
        self._compile_target = compile_target
        self._spec = spec.name
        self._tag_owners = tag_owners  # every spelling of every target's tags -> that target
        self._explicit: dict[str, NamedContext | str] = {}
        for name, ref in spec.contexts:
            if ref.kind == "target":
                self._explicit[name] = ref.value
            elif ref.kind == "image":
                self._explicit[name] = NamedContext(image=ref.value)
            else:
                self._explicit[name] = NamedContext(directory=ref.value)

    def _lookup(self, name: str) -> NamedContext | str | None:
        if name in self._explicit:
            return self._explicit[name]
        owner = self._tag_owners.get(name)
        return owner if owner is not None and owner != self._spec else None

    def __getitem__(self, name: str) -> NamedContext:
        value = self._lookup(name)
        if value is None:
            raise KeyError(name)
        if isinstance(value, str):  # a target: lower it now (cycles are caught there)
            return NamedContext(stage=self._compile_target(value).target)
        return value

    def __iter__(self) -> Iterator[str]:
        keys = set(self._explicit) | {k for k, v in self._tag_owners.items() if v != self._spec}
        return iter(sorted(keys))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _forms(tag: str) -> set[str]:
    try:
        ref = parse_reference(tag)
    except InputError:
        return {tag}
    return {tag, str(ref), ref.familiar}


def compile_project(
    project: Project,
    names: Sequence[str],
    *,
    store: LocalStore,
    client: ClientFactory,
    always_pull: bool = False,
) -> Compiled:
    """Lower every requested target (and what it needs) into plans sharing one key space."""
    compiled = Compiled({}, stat_cache=StatCache.load(store.root / STAT_CACHE))
    stat_cache = compiled.stat_cache  # a context shared by several targets is hashed once
    fetch = url_fetcher(store.root / "downloads")
    resolvers: dict[Platform, object] = {}
    in_progress: list[str] = []
    tag_owners = {
        form: name for name, spec in project.targets for tag in spec.tags for form in _forms(tag)
    }

    def compile_target(name: str) -> BuildPlan:
        if name in compiled.plans:
            return compiled.plans[name]
        spec = project.target(name)
        if name in in_progress:
            cycle = " -> ".join([*in_progress[in_progress.index(name) :], name])
            raise InputError(f"targets depend on each other in a cycle: {cycle}", spec.where)
        in_progress.append(name)
        try:
            for dependency in spec.depends_on:
                compile_target(dependency)
            platform = parse_platform(spec.platform) if spec.platform else default_platform()
            if platform not in resolvers:
                resolvers[platform] = base_resolver(
                    store, client, platform, always_pull=always_pull
                )
            ignore = compiled.ignores.setdefault(
                str(spec.context), load_dockerignore(spec.context, spec.dockerfile)
            )
            if not spec.dockerfile.is_file():
                raise InputError(
                    f"target {name}: Dockerfile {spec.dockerfile} not found", spec.where
                )
            plan = lower_dockerfile(
                parse_dockerfile(spec.dockerfile),
                target=spec.target,
                build_args=dict(spec.args),
                context=spec.context,
                ignore=ignore,
                resolve_base=resolvers[platform],  # type: ignore[arg-type]
                stat_cache=stat_cache,
                platform=platform,
                fetch_url=fetch,
                named=_TargetContexts(compile_target, spec, tag_owners),
            )
        finally:
            in_progress.remove(name)
        compiled.plans[name] = plan
        compiled.warnings.extend(f"{name}: {warning}" for warning in plan.warnings)
        return plan

    for name in select_targets(project, names):
        compile_target(name)
    return compiled


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
) -> RunResult:
    """`export_cached` (warm --build): also export the steps this run did not build, where the
    export repository lacks them."""
    start = time.monotonic()
    store.ensure()
    compiled = compile_project(project, names, store=store, client=client, always_pull=always_pull)
    for plan in compiled.plans.values():
        check_entitlements(plan.steps.values(), allow)
    graph = compile_graph(*compiled.plans.values())
    for name, plan in compiled.plans.items():
        add_export(graph, name, plan.target.key)
    secrets = {
        secret_id: Path(source)
        for name in compiled.plans
        for secret_id, source in project.target(name).secrets
    }
    finals = [plan.target.key for plan in compiled.plans.values()]
    remote = remote_session(
        store,
        client,
        source=cache_from if cache_from is not None else project.cache.remote,
        target=cache_to if cache_to is not None else project.cache.remote,
        warn=warn,
        required=cache_required,
        export_only=None if project.cache.mode == "max" else _image_entries(graph, finals),
        layers_early=None if project.cache.mode == "max" else _image_steps(graph, finals),
    )
    # An export that pushes by mounting from the remote cache needs no layers here: the
    # scheduler then does not fetch the layers of its last step for it.
    for name in compiled.plans:
        lazy = _mount_cache(project.target(name), push_all, remote) is not None
        graph.nodes[f"export:{name}"]["needs_files"] = not lazy
    worker = Worker(
        store=store,
        snapshots=SnapshotStore(store.root / "snapshots"),
        ignores=compiled.ignores,
        epoch=epoch,
        output=lambda title, data: sink.emit(LogEvent(title, data)),
        network=network,
        secrets=secrets,
        fetch_layers=remote.ensure_layers if remote else None,
        isolation=isolation,
        phases=phases,
    )
    if isinstance(getattr(sink, "targets", None), dict):  # the json renderer names targets
        sink.targets.update(step_targets(compiled, graph))  # type: ignore[attr-defined]
    try:
        outcome = run(
            graph,
            worker=worker,
            index=StepIndex(store.root / "steps"),
            sink=sink,
            jobs=jobs,
            no_cache=no_cache,
            keep_going=keep_going,
            remote=remote,
            exports={
                f"export:{name}": functools.partial(
                    export_target,
                    project.target(name),
                    plan,
                    store=store,
                    client=client,
                    epoch=epoch,
                    push_all=push_all,
                    remote=remote,
                    compression=compression,
                )
                for name, plan in compiled.plans.items()
            },
        )
    finally:
        worker.close()  # the chroot isolation's roots
    built = {key for key in graph if key in outcome.records} - outcome.cached
    if export_cached and remote is not None:
        index = StepIndex(store.root / "steps")
        remote.export_cached(_cached_records(graph, outcome, index, built))
    results = []
    finished = [n for n, p in compiled.plans.items() if p.target.key in outcome.records]
    record_builds(compiled, graph, store, finished)
    compiled.stat_cache.save(store.root / STAT_CACHE)
    for name, plan in compiled.plans.items():
        results.append(_target_result(name, plan, graph, outcome, built, start))
    if remote is not None:
        remote.finish()
    return RunResult(
        tuple(results),
        outcome,
        graph,
        time.monotonic() - start,
        tuple(compiled.warnings),
        remote.downloaded if remote else 0,
        len(remote.exported) if remote else 0,
    )


def _cached_records(
    graph: nx.DiGraph, outcome: Outcome, index: StepIndex, built: set[str]
) -> dict[str, StepRecord]:
    """The records of the graph's steps this run did not build: those it used, and those
    below a cached step that the local store still holds."""
    records = {}
    for key, data in graph.nodes(data=True):
        if "step" not in data or key in built:
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


def _image_entries(graph: nx.DiGraph, finals: Sequence[str]) -> set[str]:
    """Mode min's entries, what BuildKit's min mode keeps: each target's last step, and each
    step on the targets' own lines that adds a layer (RUN, COPY, ADD), so that a change near
    the end of a Dockerfile still finds the layers below it."""
    layered = {
        key
        for key in _image_steps(graph, finals)
        if isinstance(graph.nodes[key]["step"], RunStep | CopyStep)
    }
    return layered | set(finals)


def _image_steps(graph: nx.DiGraph, finals: Sequence[str]) -> set[str]:
    """The steps whose layers the targets' images hold: each target's own line of steps."""
    return {key for final in finals for key in chain(graph, final)}


def run_project(project: Project, names: Sequence[str], **options) -> RunResult:
    """Compile and build the targets, holding the cache dir against a concurrent prune."""
    with using(options["store"]):
        return _run_project(project, names, **options)


def record_builds(
    compiled: Compiled, graph: nx.DiGraph, store: LocalStore, names: Sequence[str]
) -> None:
    """After a run: remember what each finished target's steps read."""
    records = BuildRecords(store.root / "targets")
    for name in names:
        keys = chain(graph, compiled.plans[name].target.key)
        if records.keys(name) == keys:
            continue  # the record already describes these steps: no context walk again
        summaries = [
            summarize(graph.nodes[k]["step"], compiled.ignores, compiled.stat_cache) for k in keys
        ]
        records.save(name, keys, summaries)


def export_target(
    spec: TargetSpec,
    plan: BuildPlan,
    record: StepRecord,
    *,
    store: LocalStore,
    client: ClientFactory,
    epoch: int | None,
    push_all: bool,
    remote: RemoteSession | None,
    compression: str = "gzip",
) -> Exported:
    """The work of a target's export node: image, local tags, outputs, pushes."""
    cache = _mount_cache(spec, push_all, remote)
    if cache is not None and remote is not None and record.missing_layers(store):
        return _push_mounted(
            spec,
            plan,
            record,
            cache,
            remote,
            store=store,
            client=client,
            epoch=epoch,
            compression=compression,
        )
    if remote is not None:  # a local tag or output needs the files: fetch what only the remote has
        remote.ensure_layers(record)
    if missing := record.missing_layers(store):
        raise CacheError(
            f"target {spec.name}: {len(missing)} layers (first {missing[0].digest}) are in "
            "neither the local store nor a reachable remote cache; run with its remote cache "
            "or --no-cache"
        )
    image = assemble_image(store, plan.target, record, epoch=epoch)
    tags = []
    for tag in spec.tags:
        ref = parse_reference(tag)
        store.tag(ref.familiar, str(ref), image)
        tags.append(ref.familiar)
    for output in spec.outputs:
        export_output(store, image, tuple(tags), output, client, spec.dockerfile, compression)
    if spec.push or push_all:
        from buildgraph.registry.transfer import push  # needs requests: only when pushing

        for tag in spec.tags:
            stored = StoredImage(tag, str(parse_reference(tag)), image)
            push(client(), store, stored, parse_reference(tag), compression=compression)
    return Exported(image, tuple(tags), time.monotonic())


def _mount_cache(
    spec: TargetSpec, push_all: bool, remote: RemoteSession | None
) -> Reference | None:
    """The remote cache repository a target's push can mount layers from instead of
    downloading them: when it is only pushed (no local outputs) and only to the cache's
    registry. None when its export needs the files here."""
    if remote is None or remote.source is None or spec.outputs or not spec.tags:
        return None
    cache = remote.source.repository
    if not (spec.push or push_all) or any(
        parse_reference(tag).registry != cache.registry for tag in spec.tags
    ):
        return None
    return cache


def _push_mounted(
    spec: TargetSpec,
    plan: BuildPlan,
    record: StepRecord,
    cache: Reference,
    remote: RemoteSession,
    *,
    store: LocalStore,
    client: ClientFactory,
    epoch: int | None,
    compression: str = "gzip",
) -> Exported:
    """Push an image whose layers are (partly) only in the remote cache: the registry mounts
    them from the cache repository, as the cache holds them (built layers: uncompressed), and
    nothing is downloaded; a layer it will not mount is downloaded and uploaded. A local tag
    must name blobs the store has, so the image is tagged locally only if all ended up here."""
    from buildgraph.registry.transfer import push  # needs requests: only when pushing

    layers = {layer.descriptor.digest: layer for layer in record.layers}

    def fetch(blob: Descriptor) -> None:  # a refused mount: just this layer comes through here
        remote.ensure_layers(StepRecord((layers[blob.digest],), ()))

    image = assemble_image(store, plan.target, record, epoch=epoch)  # config + manifest only
    refs = [parse_reference(tag) for tag in spec.tags]
    for ref in refs:
        stored = StoredImage(ref.familiar, str(ref), image)
        push(
            client(), store, stored, ref, mount_from=(cache,), fetch=fetch, compression=compression
        )
    if not (missing := record.missing_layers(store)):
        for ref in refs:
            store.tag(ref.familiar, str(ref), image)
        return Exported(image, tuple(ref.familiar for ref in refs), time.monotonic())
    layers_word = "layer" if len(missing) == 1 else "layers"
    note = (
        f"pushed without downloading: {len(missing)} {layers_word} mounted from {cache}; "
        "not tagged locally"
    )
    return Exported(image, tuple(str(ref) for ref in refs), time.monotonic(), note)


def _target_result(
    name: str, plan: BuildPlan, graph: nx.DiGraph, outcome: Outcome, built: set[str], start: float
) -> TargetResult:
    key = plan.target.key
    steps = tuple(sorted(nx.ancestors(graph, key) | {key}))
    ran = sum(1 for step in steps if step in built)
    done = outcome.exported.get(f"export:{name}")
    if done is None:
        keys = (*steps, f"export:{name}")
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
    broken = [t.name for t in result.targets if key in t.steps]
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    message = f"target {', '.join(broken) or '?'}: {first.args[0]}{more}"
    error = type(first)(message, first.where) if isinstance(first, BuildgraphError) else None
    raise error if error is not None else StepFailed(message)


def step_targets(compiled: Compiled, graph: nx.DiGraph) -> dict[str, list[str]]:
    """Step key -> every target it serves (for progress events)."""
    served: dict[str, list[str]] = {}
    for name, plan in compiled.plans.items():
        for key in nx.ancestors(graph, plan.target.key) | {plan.target.key}:
            served.setdefault(key, []).append(name)
        served[f"export:{name}"] = [name]  # the target's tag, output or push
    return served


def default_jobs() -> int:
    return os.cpu_count() or 2
