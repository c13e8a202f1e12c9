"""`buildgraph build`: one Dockerfile and its context in, an image in the store (and beyond) out."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from buildgraph.cache.local import LocalStore, StoredImage
from buildgraph.cache.prune import using
from buildgraph.cache.steps import StepIndex
from buildgraph.errors import BuildgraphError, CacheError, InputError, Location, StepFailed
from buildgraph.frontend.dockerfile import parse_dockerfile
from buildgraph.frontend.ignore import IgnoreMatcher, load_dockerignore
from buildgraph.graph.context import StatCache
from buildgraph.graph.lower import BaseImage, BaseResolver, BuildPlan, StagePlan, lower_dockerfile
from buildgraph.graph.remote import url_fetcher
from buildgraph.graph.steps import check_entitlements, inputs_of
from buildgraph.image.assemble import assemble_image
from buildgraph.image.export import (
    export_docker_archive,
    export_local,
    export_oci,
    output_compression,
    parse_output,
)
from buildgraph.image.oci import Descriptor, Platform
from buildgraph.registry.reference import parse_reference
from buildgraph.solver.events import EventSink, LogEvent, StepEvent, StepState
from buildgraph.solver.outcome import Outcome

if TYPE_CHECKING:  # the client pulls in requests; only a registry call needs it
    import networkx as nx

    from buildgraph.registry.client import RegistryClient
    from buildgraph.worker.phases import PhaseSink

ClientFactory = Callable[[], "RegistryClient"]


@dataclass(frozen=True, slots=True)
class BuildRequest:
    context: Path
    dockerfile: Path
    target: str | None = None
    build_args: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    platform: Platform = field(default_factory=Platform)
    no_cache: bool = False
    pull: bool = False  # always ask the registry for FROM images
    push: bool = False
    jobs: int = os.cpu_count() or 2
    network: str = "host"  # what RUN uses unless it says --network
    cache_from: str | None = None  # remote cache repositories (--cache-repo sets both)
    cache_to: str | None = None
    secrets: Mapping[str, Path] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)  # --label: added to the image config
    allow: frozenset[str] = frozenset()  # entitlements (--allow), e.g. security.insecure
    isolation: str = "auto"  # auto | namespaces | chroot (worker/isolation.py)
    compression: str = "gzip"  # of layers pushed (--push, type=registry): gzip or zstd


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


def relocate(err: BuildgraphError, where: Location | None) -> BuildgraphError:
    """The same error, naming the Dockerfile line it came from (if it named none)."""
    if err.where is None and where is not None:
        err.where = where
    return err


def base_resolver(
    store: LocalStore, client: ClientFactory, platform: Platform, *, always_pull: bool
) -> BaseResolver:
    """FROM name looks in the local store first, then asks the registry (once per run)."""
    seen: dict[str, BaseImage] = {}

    def resolve(text: str, where: Location | None) -> BaseImage:
        if text in seen:
            return seen[text]
        try:
            ref = parse_reference(text)
            image = (
                None if always_pull else (store.resolve(ref.familiar) or store.resolve(str(ref)))
            )
            if image is None:
                from buildgraph.registry.transfer import pull  # needs requests: only here

                image = pull(client(), store.ensure(), ref, platform=platform)
            config = store.read_config(store.read_manifest(image.descriptor))
        except BuildgraphError as err:
            raise relocate(err, where) from err.__cause__
        seen[text] = BaseImage(str(ref), image.descriptor.digest, config)
        return seen[text]

    return resolve


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
    outcome = None if request.no_cache else _already_built(plan, store, index, sink)
    if outcome is None:
        outcome = _run_steps(
            request,
            plan,
            store=store,
            client=client,
            sink=sink,
            epoch=epoch,
            index=index,
            ignores={str(context): ignore},
            phases=phases,
        )
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
        from buildgraph.registry.transfer import push

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
    plan: BuildPlan, store: LocalStore, index: StepIndex, sink: EventSink
) -> Outcome | None:
    """The outcome of a build whose last step is cached here with all its layers: nothing
    else is read, no graph is built and the scheduler and worker are never imported (a no-op
    rebuild is then mostly interpreter start-up). None when anything has to run or be fetched."""
    try:
        record = index.get(plan.target.key)
    except CacheError:
        return None  # corrupt: the scheduler rebuilds it
    if record is None or record.missing_layers(store):
        return None
    cached = frozenset(key for key in plan.steps if index.has(key))
    for key, step in plan.steps.items():  # what the scheduler would report: the local hits
        if key in cached:
            index.touch(key)
            sink.emit(StepEvent(key, StepState.CACHED, step.title or key[:12]))
    unneeded = frozenset(plan.steps) - cached
    return Outcome({plan.target.key: record}, {}, (), cached, unneeded=unneeded)


def _run_steps(
    request: BuildRequest,
    plan: BuildPlan,
    *,
    store: LocalStore,
    client: ClientFactory,
    sink: EventSink,
    epoch: int | None,
    index: StepIndex,
    ignores: dict[str, IgnoreMatcher],
    phases: PhaseSink | None = None,
) -> Outcome:
    """Schedule the plan's steps (cache, remote cache, worker) and wait for the outcome."""
    from buildgraph.solver.remote import remote_session
    from buildgraph.solver.scheduler import run
    from buildgraph.worker.execute import Worker
    from buildgraph.worker.snapshot import SnapshotStore

    remote = remote_session(
        store,
        client,
        source=request.cache_from,
        target=request.cache_to,
        warn=lambda text: sink.emit(LogEvent("remote cache", f"warning: {text}\n".encode())),
        required=False,
        export_only=None,
    )
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
    try:
        outcome = run(
            compile_graph(plan),
            worker=worker,
            index=index,
            sink=sink,
            jobs=request.jobs,
            no_cache=request.no_cache,
            remote=remote,
        )
    finally:
        worker.close()  # the chroot isolation's roots
    if remote is not None:
        record = outcome.records.get(plan.target.key)
        if record is not None:  # the image is tagged here: its layers must be here
            remote.ensure_layers(record)
        remote.finish()
    return outcome


def build(request: BuildRequest, **options) -> BuildResult:
    """Build one Dockerfile, holding the cache dir against a concurrent prune."""
    with using(options["store"]):
        return _build(request, **options)


def compile_graph(*plans: BuildPlan) -> nx.DiGraph:
    """One graph of every plan's steps; equal keys from different plans are one node."""
    import networkx as nx

    from buildgraph.solver.scheduler import add_step

    graph = nx.DiGraph()
    for plan in plans:
        for key, step in plan.steps.items():
            add_step(graph, key, step, inputs_of(step))
    return graph


def _tag(store: LocalStore, image: Descriptor, tags: Sequence[str]) -> tuple[str, ...]:
    names = []
    for tag in tags:
        ref = parse_reference(tag)
        store.tag(ref.familiar, str(ref), image)
        names.append(ref.familiar)
    return tuple(names)


def export_output(
    store: LocalStore,
    image: Descriptor,
    tags: tuple[str, ...],
    text: str,
    client: ClientFactory,
    dockerfile: Path,
    compression: str = "gzip",
) -> None:
    """`compression`: --compression, for a registry output that names none itself."""
    spec = parse_output(text)
    name = spec.attr("name") or (tags[0] if tags else "")
    stored = StoredImage(name or "image", name or "image", image)
    if spec.type == "oci":
        export_oci(store, stored, Path(spec.dest), name or "latest", output_compression(spec))
    elif spec.type == "docker":
        export_docker_archive(store, stored, Path(spec.dest), [name] if name else [])
    elif spec.type == "local":
        export_local(store, stored, Path(spec.dest))
    elif spec.type in ("registry", "image"):
        from buildgraph.registry.transfer import push

        if not name:
            raise InputError(
                "--output type=registry needs a name= or a -t tag", Location(dockerfile)
            )
        compression = output_compression(spec, compression)
        push(client(), store, stored, parse_reference(name), compression=compression)
