"""`run --executor dask`: the coordinator's connection to a Dask cluster, held for one run."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from buildgraph.errors import InputError
from buildgraph.frontend.ignore import IgnoreMatcher
from buildgraph.solver.events import EventSink
from buildgraph.solver.remote import RemoteSession
from buildgraph.worker.local_executor import LocalExecutor

EXECUTOR_KINDS = ("local", "dask")


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    """Where the Dask scheduler is, and the registry settings its workers use too."""

    scheduler: str
    insecure: tuple[str, ...] = ()
    ca_bundle: str | None = None
    registry_timeout: float = 120.0


def require_remote_cache(remote: RemoteSession | None) -> None:
    if remote is None or remote.target is None:
        raise InputError(
            "--executor dask needs a remote cache (cache.remote in the Buildfile, or "
            "--cache-to): it is the only store the workers share"
        )


@contextlib.contextmanager
def dask_executor(
    options: ClusterOptions,
    local: LocalExecutor,
    *,
    ignores: Mapping[str, IgnoreMatcher],
    sink: EventSink,
    epoch: int | None,
    network: str,
    isolation: str,
    jobs: int,
) -> Iterator[tuple[object, int]]:
    """The Dask executor over `local` (which keeps cached steps and exports) and the number
    of steps the scheduler may have running: two per thread of the cluster (the next step
    waits in the worker's queue while one runs, so no worker idles through a dispatch's
    round trip) plus `jobs` for the coordinator's own steps and exports, which would
    otherwise wait behind the remote ones."""
    from buildgraph.executors.dask_executor import DaskExecutor, connect, total_threads
    from buildgraph.executors.dask_worker import WorkerSettings

    remote = local.remote
    require_remote_cache(remote)
    assert remote is not None and remote.target is not None
    client = connect(options.scheduler)
    try:
        settings = WorkerSettings(
            cache_repo=str(remote.target.repository),
            insecure=options.insecure,
            ca_bundle=options.ca_bundle,
            registry_timeout=options.registry_timeout,
            epoch=epoch,
            network=network,
            isolation=isolation,
            run=uuid.uuid4().hex,
        )
        executor = DaskExecutor(local, client, settings, sink, ignores)
        yield executor, jobs + 2 * total_threads(client)
    finally:
        client.close()
