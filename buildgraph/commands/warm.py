"""`buildgraph warm`: fill the local cache from the remote one (and optionally build the rest)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from buildgraph.cache.local import LocalStore
from buildgraph.cache.remote import RemoteCache, RemoteEntry
from buildgraph.cache.steps import StepIndex, StepRecord
from buildgraph.commands.compile import ClientFactory, compile_project, project_graph
from buildgraph.errors import AuthError, InputError
from buildgraph.frontend.buildfile import Project
from buildgraph.graph.model import Target
from buildgraph.registry.reference import parse_reference
from buildgraph.solver.facts import look_up_remote, read_local
from buildgraph.solver.plan import Action, plan


@dataclass(frozen=True, slots=True)
class WarmPlan:
    """Known before any download: the totals that progress is measured against."""

    steps: int  # steps the targets need
    local: int  # already in the local cache
    entries: int  # usable remote entries, to fetch
    bytes: int  # their layer bytes the local store lacks; a layer shared by entries counts once
    missing: int  # in neither cache (or unusable remotely): a run would build them


@dataclass(frozen=True, slots=True)
class EntryFetched:
    key: str
    bytes: int  # layer bytes downloaded for it; a layer shared by entries counts for one


@dataclass(frozen=True, slots=True)
class WarmResult:
    steps: int  # steps the targets need
    local: int  # already in the local cache
    fetched: int  # entries taken from the remote cache
    missing: int  # in neither: a run would build them
    bytes: int  # layer bytes downloaded


WarmEvent = WarmPlan | EntryFetched | WarmResult  # in this order; the result comes last


def _ignore(_: object) -> None:
    pass


def warm_project(
    project: Project,
    names: Sequence[str],
    *,
    store: LocalStore,
    client: ClientFactory,
    cache_from: str | None = None,
    jobs: int = 8,
    progress: Callable[[WarmEvent], None] = _ignore,
    warn: Callable[[str], None] = _ignore,
) -> WarmResult:
    """Base images are pulled while compiling; then every remote entry the steps need is
    fetched with its layers, so `run --offline` needs no network afterwards."""
    source = cache_from or project.cache.remote
    if not source:
        raise InputError("warm needs a remote cache: cache.remote in the Buildfile or --cache-from")
    try:  # before compiling: a bad reference costs no pull
        repository = parse_reference(source, default_tag=None)
    except InputError as err:
        raise InputError(f"remote cache: {err}") from err
    store.ensure()
    compiled = compile_project(project, names, store=store, client=client)
    # Warm brings every entry any later run may start from (a change anywhere then builds
    # only from there, offline): the plan of a graph in which every step is a result.
    compiled_graph = project_graph(compiled)
    graph = compiled_graph.with_targets(Target(key, key) for key in compiled_graph.steps)
    index = StepIndex(store.root / "steps")
    try:
        remote = RemoteCache(client(), repository, jobs=jobs)
        entries: dict[str, RemoteEntry] = {}

        def lookup(keys: Iterable[str]) -> set[str]:
            found = remote.lookup(list(keys))
            entries.update(found)
            return set(found)

        # Layers missing here make a local record unusable: warm fetches them too, so that
        # `run --offline` needs no network afterwards.
        local = read_local(graph, index=index, store=store, layers_elsewhere=False, no_cache=False)
        hits = look_up_remote(graph, local.records.keys(), lookup)
        planned = plan(graph, local=local.records.keys(), remote=hits, unusable=local.unusable)
        wanted = {key: entries[key] for key in planned.keys(Action.FETCH, Action.USE_REMOTE)}
        return _fetch(
            remote,
            wanted,
            steps=len(graph),
            local=len(planned.keys(Action.USE_LOCAL)),
            missing=len(planned.keys(Action.BUILD)),
            store=store,
            index=index,
            progress=progress,
            warn=warn,
        )
    except AuthError as err:  # bad credentials are not a missing cache: say so, exit 3
        raise AuthError(f"remote cache {repository.repository_only()}: {err}") from err


def _fetch(
    remote: RemoteCache,
    hits: dict[str, RemoteEntry],
    *,
    steps: int,
    local: int,
    missing: int,
    store: LocalStore,
    index: StepIndex,
    progress: Callable[[WarmEvent], None],
    warn: Callable[[str], None],
) -> WarmResult:
    """Each distinct layer is downloaded once, in parallel; an entry is written to the index
    as soon as all of its layers are here, so an interrupted warm leaves only whole entries.
    `missing`: steps in neither cache; an entry that cannot be read joins them."""
    with ThreadPoolExecutor(max_workers=remote.jobs) as pool:
        found = list(pool.map(lambda entry: remote.fetch_record(entry, warn=warn), hits.values()))
    records = {key: record for key, record in zip(hits, found, strict=True) if record is not None}
    blobs = {
        layer.descriptor.digest: layer.descriptor
        for record in records.values()
        for layer in record.layers
        if not store.has_blob(layer.descriptor.digest)
    }
    waiting = {key: _digests(record) & blobs.keys() for key, record in records.items()}
    progress(
        WarmPlan(
            steps=steps,
            local=local,
            entries=len(records),
            bytes=sum(blob.size for blob in blobs.values()),
            missing=missing + len(hits) - len(records),
        )
    )
    downloaded: dict[str, int] = {}  # digest -> bytes, until the first entry done counts them
    total = 0

    def complete(key: str) -> None:
        nonlocal total
        index.put(key, records[key])  # only after its layers are here: the entry is complete
        size = sum(downloaded.pop(digest, 0) for digest in _digests(records[key]))
        total += size
        progress(EntryFetched(key, size))

    for key in [key for key, needs in waiting.items() if not needs]:
        complete(key)
    pool = ThreadPoolExecutor(max_workers=remote.jobs)
    try:
        futures: dict[Future[int], str] = {
            pool.submit(remote.download_blob, blob, store): digest for digest, blob in blobs.items()
        }
        for future in as_completed(futures):  # events come from this thread only
            digest = futures[future]
            downloaded[digest] = future.result()
            for key, needs in waiting.items():
                if digest in needs:
                    needs.discard(digest)
                    if not needs:
                        complete(key)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    result = WarmResult(
        steps=steps,
        local=local,
        fetched=len(records),
        missing=missing + len(hits) - len(records),
        bytes=total,
    )
    progress(result)
    return result


def _digests(record: StepRecord) -> set[str]:
    return {layer.descriptor.digest for layer in record.layers}
