"""`buildgraph warm`: fill the local cache from the remote one (and optionally build the rest)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from buildgraph.cache.local import LocalStore
from buildgraph.cache.remote import RemoteCache
from buildgraph.cache.steps import StepIndex, StepRecord
from buildgraph.commands.build import ClientFactory
from buildgraph.commands.plan import union_graph
from buildgraph.commands.run import compile_project
from buildgraph.errors import AuthError, InputError
from buildgraph.frontend.buildfile import Project
from buildgraph.registry.reference import parse_reference


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
    graph = union_graph(compiled)
    index = StepIndex(store.root / "steps")
    wanted = [key for key in graph if not index.has(key)]
    try:
        return _fetch(
            RemoteCache(client(), repository, jobs=jobs),
            wanted,
            steps=len(graph),
            store=store,
            index=index,
            progress=progress,
            warn=warn,
        )
    except AuthError as err:  # bad credentials are not a missing cache: say so, exit 3
        raise AuthError(f"remote cache {repository.repository_only()}: {err}") from err


def _fetch(
    remote: RemoteCache,
    wanted: list[str],
    *,
    steps: int,
    store: LocalStore,
    index: StepIndex,
    progress: Callable[[WarmEvent], None],
    warn: Callable[[str], None],
) -> WarmResult:
    """Each distinct layer is downloaded once, in parallel; an entry is written to the index
    as soon as all of its layers are here, so an interrupted warm leaves only whole entries."""
    hits = remote.lookup(wanted)
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
            local=steps - len(wanted),
            entries=len(records),
            bytes=sum(blob.size for blob in blobs.values()),
            missing=len(wanted) - len(records),
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
        local=steps - len(wanted),
        fetched=len(records),
        missing=len(wanted) - len(records),
        bytes=total,
    )
    progress(result)
    return result


def _digests(record: StepRecord) -> set[str]:
    return {layer.descriptor.digest for layer in record.layers}
