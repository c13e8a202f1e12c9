"""What runs inside a Dask worker: one step, built once; its export finishes after it returns."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from buildgraph import __version__
from buildgraph.cache.local import LocalStore
from buildgraph.cache.remote import RemoteCache
from buildgraph.cache.steps import StepIndex, StepRecord
from buildgraph.errors import BuildgraphError, CacheError, InputError
from buildgraph.executors.context_blob import ContextBlob, pull_context
from buildgraph.graph.steps import CopyStep, Step
from buildgraph.registry.reference import parse_reference
from buildgraph.solver.remote import RemoteSession
from buildgraph.worker.execute import Worker
from buildgraph.worker.snapshot import SnapshotStore

CACHE_DIR_ENV = "BUILDGRAPH_CACHE_DIR"  # each worker's own local cache, on its own disk
# Each worker's secrets: a dir with one file per secret id (a Kubernetes Secret volume is one).
# Secrets are read there, by the worker that runs the step; never sent through Dask.
SECRETS_DIR_ENV = "BUILDGRAPH_SECRETS_DIR"
EVENTS_TOPIC = "buildgraph"  # Dask's event log: live output and what each worker built
PLUGIN_NAME = "buildgraph"  # the worker plugin that keeps a run's registry session


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What a worker needs to know of the run besides the step (no credentials: a worker
    reads its own registry login, from $DOCKER_CONFIG like every buildgraph)."""

    cache_repo: str  # the remote cache repository: the only store the machines share
    insecure: tuple[str, ...] = ()
    ca_bundle: str | None = None
    registry_timeout: float = 120.0  # seconds a registry request may take, retries included
    epoch: int | None = None
    network: str = "host"
    isolation: str = "auto"
    version: str = __version__
    run: str = ""  # this run's id: workers keep a registry session per run (dask_state.py)


@dataclass(frozen=True, slots=True)
class StepResult:
    record: StepRecord
    worker: str  # the Dask worker's address
    built: bool  # False: another worker (or an earlier run) had exported it already
    seconds: float  # spent in the worker, for the dispatch overhead
    # True: the export is still running on `worker`, which logs "exported" (or
    # "export-failed") when it ends; False: the entry is in the remote cache already.
    exporting: bool = False


def probe() -> dict[str, object]:
    """What the coordinator checks on every worker before a step runs (via `Client.run`):
    the version, the cache dir, and the ids (never the contents) of the worker's secrets."""
    return {
        "version": __version__,
        "cache_dir": os.environ.get(CACHE_DIR_ENV, ""),
        "secrets": sorted(worker_secrets()),
    }


def worker_secrets() -> dict[str, Path]:
    """Secret id -> file, from $BUILDGRAPH_SECRETS_DIR: each file not starting with a dot
    (a Kubernetes Secret volume's files are links into its `..data` dir: followed)."""
    directory = os.environ.get(SECRETS_DIR_ENV, "")
    if not directory or not os.path.isdir(directory):
        return {}
    return {
        name: Path(directory) / name
        for name in sorted(os.listdir(directory))
        if not name.startswith(".") and os.path.isfile(os.path.join(directory, name))
    }


def _worker():
    from distributed import get_worker

    return get_worker()


def _address() -> str:
    return _worker().address


def _log(message: dict[str, object], worker=None) -> None:
    """Send `message` to the event log; `worker` is given from a thread Dask did not start."""
    (worker or _worker()).log_event(EVENTS_TOPIC, message)  # thread-safe (via its loop)


def _client(settings: WorkerSettings):
    from buildgraph.registry.auth import CredentialStore
    from buildgraph.registry.client import RegistryClient

    return RegistryClient(
        credentials=CredentialStore.from_environment(),
        insecure=settings.insecure,
        ca_bundle=settings.ca_bundle,
        total_timeout=settings.registry_timeout,
    )


def build_step(
    key: str,
    step: Step,
    inputs: Mapping[str, StepRecord],
    settings: WorkerSettings,
    context: ContextBlob | None = None,
) -> StepResult:
    """Build `step` on this worker unless this worker's cache or the remote cache has it
    already (a task rescheduled after a worker died must not build it twice). A built step is
    returned as soon as it is in this worker's cache, its export (blobs first, tag last)
    still running in a thread of this worker, which logs "exported" when the tag is written:
    the worker takes its next step meanwhile, and the coordinator counts the step done only
    once that event came (see DaskExecutor.build)."""
    start = time.monotonic()
    address = _address()
    cache_dir = os.environ.get(CACHE_DIR_ENV)
    if not cache_dir:
        raise InputError(f"worker {address}: no cache dir (set {CACHE_DIR_ENV})")
    store = LocalStore(Path(cache_dir))
    store.ensure()
    index = StepIndex(store.root / "steps")
    cache, owned = _remote_cache(settings)
    remote = RemoteSession(store, source=cache, target=cache, warn=lambda _: None, required=True)
    handed_off = False  # the export thread finishes the session and closes the client
    note = {"key": key, "worker": address, "run": settings.run}
    try:
        found = _already_built(key, remote)
        if found is not None:  # no event: one costs the round trip ~5 ms (measured)
            return StepResult(found, address, False, time.monotonic() - start)
        here = _built_here(key, index)
        if here is not None:  # built for another cache repository: export it to this one
            remote.export(key, here)
            remote.finish()
            _log({**note, "state": "reused"})
            return StepResult(here, address, False, time.monotonic() - start)
        _log({**note, "state": "started", "title": step.title})
        record = _execute(step, inputs, settings, store, remote, context, cache.client, address)
        index.put(key, record)
        remote.export(key, record)  # in the session's threads, from now on
        _log({**note, "state": "built"})
        worker = _worker()
        threading.Thread(
            target=_finish_export, args=(remote, cache, owned, note, worker), daemon=True
        ).start()
        handed_off = True
        return StepResult(record, address, True, time.monotonic() - start, exporting=True)
    finally:
        if not handed_off:
            remote.finish()
            if owned:
                cache.client.close()


def _finish_export(remote: RemoteSession, cache: RemoteCache, owned: bool, note: dict, worker):
    """Wait for the step's export and tell the coordinator how it ended. A worker that dies
    before this leaves no tag (at most unreferenced blobs): the coordinator, still holding
    the task's future, sees Dask compute it again on another worker."""
    try:
        remote.finish()
    except Exception as err:  # whatever it is, the coordinator must hear of it, not wait
        _log({**note, "state": "export-failed", "error": str(err)}, worker)
    else:
        _log({**note, "state": "exported"}, worker)
    finally:
        if owned:
            cache.client.close()


def _remote_cache(settings: WorkerSettings) -> tuple[RemoteCache, bool]:
    """The run's session kept by this worker's plugin, or (no plugin: True, close its client
    after the step) one for this step."""
    from distributed import get_worker

    sessions = get_worker().plugins.get(PLUGIN_NAME)
    if sessions is not None and settings.run:
        return sessions.cache(settings, _client), False  # type: ignore[attr-defined]
    repository = parse_reference(settings.cache_repo, default_tag=None)
    return RemoteCache(_client(settings), repository), True


def has_sessions(dask_worker) -> bool:
    """Does this worker have the sessions plugin already (`Client.run` passes the worker)?"""
    return PLUGIN_NAME in dask_worker.plugins


def _already_built(key: str, remote: RemoteSession) -> StepRecord | None:
    """The step's entry in this run's cache repository (exported by another worker, maybe
    one that died since, or by an earlier run)."""
    remote.lookup([key])
    return remote.record(key)


def _built_here(key: str, index: StepIndex) -> StepRecord | None:
    """The step built by this worker before, with its layers in this worker's store."""
    try:
        return index.get(key, touch=False)
    except CacheError:
        return None


def _execute(
    step: Step,
    inputs: Mapping[str, StepRecord],
    settings: WorkerSettings,
    store: LocalStore,
    remote: RemoteSession,
    context: ContextBlob | None,
    client,
    address: str,
) -> StepRecord:
    if context is not None and isinstance(step, CopyStep):
        unpacked = pull_context(client, remote.target.repository, context, store)  # type: ignore[union-attr]
        source = dataclasses.replace(step.source, context=str(unpacked))
        step = dataclasses.replace(step, source=source)  # the context is not in the key
    worker = Worker(
        store=store,
        snapshots=SnapshotStore(store.root / "snapshots"),
        epoch=settings.epoch,
        output=lambda name, data: _log(
            {"title": name, "data": data, "worker": address, "run": settings.run}
        ),
        network=settings.network,
        fetch_layers=remote.ensure_layers,
        isolation=settings.isolation,
        secrets=worker_secrets(),
    )
    try:
        return worker.execute(step, dict(inputs))
    except BuildgraphError as err:  # the same message as locally, naming the worker
        err.args = (f"{err.args[0]} (on worker {address})", *err.args[1:])
        raise
    finally:
        worker.close()
