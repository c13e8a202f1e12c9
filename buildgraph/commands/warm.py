"""`buildgraph warm`: fill the local cache from the remote one (and optionally build the rest)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from buildgraph.cache.local import LocalStore
from buildgraph.cache.remote import RemoteCache
from buildgraph.cache.steps import StepIndex
from buildgraph.commands.build import ClientFactory
from buildgraph.commands.plan import union_graph
from buildgraph.commands.run import compile_project
from buildgraph.errors import InputError
from buildgraph.frontend.buildfile import Project
from buildgraph.registry.reference import parse_reference


@dataclass(frozen=True, slots=True)
class WarmResult:
    steps: int  # steps the targets need
    local: int  # already in the local cache
    fetched: int  # entries taken from the remote cache
    missing: int  # in neither: a run would build them
    bytes: int  # layer bytes downloaded


def warm_project(
    project: Project,
    names: Sequence[str],
    *,
    store: LocalStore,
    client: ClientFactory,
    cache_from: str | None = None,
    jobs: int = 8,
    progress: Callable[[str], None] = lambda _: None,
) -> WarmResult:
    """Base images are pulled while compiling; then every remote entry the steps need is
    fetched with its layers, so `run --offline` needs no network afterwards."""
    source = cache_from or project.cache.remote
    if not source:
        raise InputError("warm needs a remote cache: cache.remote in the Buildfile or --cache-from")
    store.ensure()
    compiled = compile_project(project, names, store=store, client=client)
    graph = union_graph(compiled)
    index = StepIndex(store.root / "steps")
    remote = RemoteCache(client(), parse_reference(source, default_tag=None), jobs=jobs)
    wanted = [key for key in graph if index.get(key) is None]
    hits = remote.lookup(wanted)
    progress(
        f"{len(graph)} steps: {len(graph) - len(wanted)} local, {len(hits)} in the remote cache"
    )

    def fetch(key: str) -> int:
        record = remote.fetch_record(hits[key], warn=progress)
        if record is None:
            return -1
        size = remote.download_layers(record, store)
        index.put(key, record)  # only after its layers are here: the entry is complete
        progress(f"fetched {key[:12]} ({size} bytes)")
        return size

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        sizes = list(pool.map(fetch, hits))
    fetched = [size for size in sizes if size >= 0]
    return WarmResult(
        steps=len(graph),
        local=len(graph) - len(wanted),
        fetched=len(fetched),
        missing=len(wanted) - len(fetched),
        bytes=sum(fetched),
    )
