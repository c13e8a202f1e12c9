"""The executor that sends a plan's RUN and COPY steps to the workers of a Dask cluster."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from buildgraph.cache.steps import StepRecord
from buildgraph.errors import InputError, RegistryError
from buildgraph.executors.context_blob import ContextBlob, push_context
from buildgraph.executors.dask_worker import (
    CACHE_DIR_ENV,
    EVENTS_TOPIC,
    SECRETS_DIR_ENV,
    StepResult,
    WorkerSettings,
    build_step,
    has_sessions,
    probe,
)
from buildgraph.frontend.ignore import IgnoreMatcher
from buildgraph.graph.model import Target
from buildgraph.graph.steps import CopyStep, RunStep, Step
from buildgraph.solver.events import EventSink, LogEvent
from buildgraph.solver.plan import Action, Plan
from buildgraph.worker.local_executor import LocalExecutor

CONNECT_TIMEOUT = 10.0  # seconds to reach the scheduler before exit 3
EXPORT_CHECK = 0.5  # seconds between looks at a task whose export has not been confirmed
# distributed's Client sends to the scheduler at most every 10 ms (its BatchedSend, fixed in
# Client): a step's submit then waits behind the release of the step before it. 2 ms is what
# the scheduler's stream to a client uses; measured: dispatch median ~20 -> ~12 ms.
CLIENT_SEND_INTERVAL = 0.002


class ClusterError(RegistryError):
    """The Dask scheduler cannot be reached, or has no workers (a network failure: exit 3)."""


def connect(address: str, timeout: float = CONNECT_TIMEOUT):
    """A Dask client of the scheduler at `address` (exit 3, one line, when unreachable)."""
    from distributed import Client

    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise ClusterError(f"dask scheduler {address} unreachable: {err}") from None
    stream = getattr(client, "scheduler_comm", None)
    if stream is not None and hasattr(stream, "interval"):  # else: distributed changed it
        stream.interval = CLIENT_SEND_INTERVAL
    return client


def refuse_unshippable(plan: Plan) -> None:
    """What a remote worker cannot be given: a bind mount of the context, on this machine's
    disk only. One line, before any step runs."""
    for key in plan.keys(Action.BUILD):
        step = plan.graph.steps[key]
        if not isinstance(step, RunStep):
            continue
        for mount in step.mounts:
            if mount.type == "bind" and not mount.stage_key:
                raise InputError(
                    f"{step.title}: RUN --mount=type=bind: bind mounts of the build context "
                    "are not sent to Dask workers; build this target with the local executor",
                    step.where,
                )


def check_worker_secrets(plan: Plan, workers: Mapping[str, Mapping]) -> None:
    """Secrets are read on the workers ($BUILDGRAPH_SECRETS_DIR), never sent through Dask, and
    any worker may run a step: a required secret must be on every worker, and an optional
    one on all or none (else a step's result would depend on where it ran). One line."""
    for key in plan.keys(Action.BUILD):
        step = plan.graph.steps[key]
        for mount in step.mounts if isinstance(step, RunStep) else ():
            if mount.type != "secret":
                continue
            lacking = [addr for addr, facts in sorted(workers.items())
                       if mount.id not in facts.get("secrets", ())]  # fmt: skip
            if lacking and (mount.required or len(lacking) < len(workers)):
                raise InputError(
                    f"{step.title}: RUN --mount=type=secret,id={mount.id}: dask worker "
                    f"{lacking[0]} has no such secret: with the Dask executor secrets are read "
                    f"on the workers, from ${SECRETS_DIR_ENV} (put {mount.id} there on every "
                    "worker; the coordinator's --secret and Buildfile sources are not sent)",
                    step.where,
                )


@dataclass
class _ExportEnd:
    """How a step's export ended, as the worker's event told: "exported", or "export-failed"
    with `error`."""

    done: threading.Event = field(default_factory=threading.Event)
    worker: str = ""
    error: str = ""


@dataclass
class DaskExecutor:
    """RUN and COPY steps go to Dask workers, one task per step (keyed by the step's key, so
    an equal step is one task); the rest (cached steps, FROM, metadata-only steps, exports)
    stays with `local`, the coordinator's own executor. Every record a worker is given names
    blobs the remote cache holds: the coordinator pushes (or mounts) them first."""

    local: LocalExecutor
    client: object  # distributed.Client
    settings: WorkerSettings
    sink: EventSink
    ignores: Mapping[str, IgnoreMatcher] = field(default_factory=dict)
    where_built: dict[str, str] = field(default_factory=dict)  # key -> worker address
    overheads: list[float] = field(default_factory=list)  # seconds per dispatch, not building
    exported: int = 0  # steps built and exported to the remote cache by the workers
    title: Callable[[str], str] = str  # a step's title (the plan's, once started)
    consumers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # the plan's graph's
    _futures: dict[str, object] = field(default_factory=dict)
    _export_ends: dict[str, _ExportEnd] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, plan: Plan) -> None:
        refuse_unshippable(plan)
        if plan.keys(Action.BUILD):
            check_worker_secrets(plan, check_workers(self.client, self.settings.version))
        self.title = plan.graph.title
        self.consumers = plan.graph.consumers
        if plan.keys(Action.BUILD) and not all(self.client.run(has_sessions).values()):
            # Registered once per cluster (the scheduler gives it to workers that join later);
            # registering again would tear down the sessions of a concurrent run.
            from buildgraph.executors.dask_state import RunSessions

            self.client.register_plugin(RunSessions())  # type: ignore[attr-defined]
        self.client.subscribe_topic(EVENTS_TOPIC, self._event)  # type: ignore[attr-defined]
        self.local.start(plan)

    def _event(self, event: tuple[float, dict]) -> None:
        message = event[1]
        if message.get("run", self.settings.run) != self.settings.run:
            return  # another coordinator's run on the same cluster
        state = message.get("state")
        if "data" in message:  # a running step's output, shown live as a local one's is
            self.sink.emit(LogEvent(str(message["title"]), bytes(message["data"])))
        elif state == "built":
            line = f"built on {message['worker']}\n".encode()
            self.sink.emit(LogEvent(self.title(str(message["key"])), line))
        elif state in ("exported", "export-failed"):
            end = self._export_end(str(message["key"]))
            end.worker, end.error = str(message["worker"]), str(message.get("error", ""))
            end.done.set()

    def _export_end(self, key: str) -> _ExportEnd:
        with self._lock:
            return self._export_ends.setdefault(key, _ExportEnd())

    def use_local(self, key: str) -> StepRecord:
        return self.local.use_local(key)

    def use_remote(self, key: str) -> StepRecord:
        return self.local.use_remote(key)

    def fetch(self, key: str) -> StepRecord:
        return self.local.fetch(key)

    def before_build(self) -> None:
        self.local.before_build()

    def build(self, key: str, step: Step, inputs: Mapping[str, StepRecord]) -> StepRecord:
        if not isinstance(step, RunStep | CopyStep):  # FROM, ENV, ...: no files, done here
            parent = getattr(step, "parent", "")
            if parent in self.where_built:  # its files are where its parent's are
                self.where_built[key] = self.where_built[parent]
            return self.local.build(key, step, inputs)
        start = time.monotonic()
        self._publish(inputs.values())
        context = self._context(step)
        preferred = self._holder(inputs)
        future = self.client.submit(  # type: ignore[attr-defined]
            build_step,
            key,
            step,
            dict(inputs),
            self.settings,
            context,
            key=f"buildgraph-step-{key}",
            workers=[preferred] if preferred else None,
            allow_other_workers=bool(preferred),  # a hint: an idle worker beats waiting
            pure=False,
            retries=0,
        )
        with self._lock:
            self._futures[key] = future
        try:
            result: StepResult = future.result()  # type: ignore[attr-defined]
            self.overheads.append(time.monotonic() - start - result.seconds)
            result = self._exported(key, future, result)
        finally:
            with self._lock:
                self._futures.pop(key, None)
                self._export_ends.pop(key, None)
        self.where_built[key] = result.worker
        if result.built:
            with self._lock:
                self.exported += 1
        self.local.index.put(key, result.record)  # its layers stay in the remote cache
        return result.record

    def _exported(self, key: str, future, result: StepResult) -> StepResult:
        """The step's result once its entry is in the remote cache, where any worker can read
        it: its worker said so, or that worker died first (the future is still held, so Dask
        computes the task again on another worker, which finds the entry or builds and
        exports the step again; that result is the one used)."""
        end = self._export_end(key)
        while result.exporting:
            told = end.done.wait(EXPORT_CHECK)
            if told and end.error:
                raise RegistryError(
                    f"{self.title(key)}: export to the remote cache failed on worker "
                    f"{end.worker}: {end.error}"
                )
            if told and end.worker == result.worker:
                return result
            # No word yet, or from another worker: if this one died, Dask has computed the
            # task again (or is computing it: then this waits), and that result counts. One
            # that found the entry in the remote cache is not exporting: no event comes.
            result = future.result()  # type: ignore[attr-defined]
            if told and result.worker != end.worker:
                time.sleep(EXPORT_CHECK)  # the new result is not seen here yet: no busy loop
        return result

    def _holder(self, inputs: Mapping[str, StepRecord]) -> str | None:
        """The worker that built the input with the most layer bytes: it has those files
        unpacked already, so the chain of a stage stays on one machine. An input that other
        steps read too (a shared base stage) does not count: its readers would all be sent to
        one worker, queued there while the others idle; any worker fetches it once."""
        sizes = {
            key: sum(layer.descriptor.size for layer in record.layers)
            for key, record in inputs.items()
            if key in self.where_built and len(self.consumers.get(key, ())) <= 1
        }
        return self.where_built[max(sizes, key=sizes.__getitem__)] if sizes else None

    def _publish(self, records) -> None:
        """Make the layers of the records a worker reads present in the remote cache: those
        of base images and of steps cached only here are pushed (once per blob and run)."""
        remote = self.local.remote
        assert remote is not None and remote.target is not None
        source = remote.source
        mount_from = () if source is None else (source.repository,)
        for record in records:
            remote.target.push_layers(record, self.local.worker.store, mount_from=mount_from)

    def _context(self, step: Step) -> ContextBlob | None:
        if not isinstance(step, CopyStep) or step.source.stage_key or not step.source.context:
            return None
        remote = self.local.remote
        assert remote is not None and remote.target is not None
        from pathlib import Path

        return push_context(
            remote.target.client,
            remote.target.repository,
            Path(step.source.context),
            step.source.paths,
            self.ignores.get(step.source.context),
        )

    def export(self, target: Target, record: StepRecord) -> object:
        return self.local.export(target, record)

    def cancel(self) -> None:
        with self._lock:
            futures = list(self._futures.values())
        if futures:
            self.client.cancel(futures)  # type: ignore[attr-defined]
        self.local.cancel()


def check_workers(client, version: str, wait: float = CONNECT_TIMEOUT) -> dict[str, dict]:
    """Every worker runs this buildgraph version and has its own cache dir; one line if not."""
    try:
        client.wait_for_workers(1, timeout=wait)
    except (OSError, TimeoutError) as err:
        raise ClusterError(f"dask scheduler has no workers after {wait:.0f} s") from err
    found: dict[str, dict] = client.run(probe)
    for address, facts in sorted(found.items()):
        if facts["version"] != version:
            raise InputError(
                f"dask worker {address} runs buildgraph {facts['version']}, this coordinator "
                f"{version}: step keys could differ; install the same version on both"
            )
        if not facts["cache_dir"]:
            raise InputError(f"dask worker {address} has no cache dir: set {CACHE_DIR_ENV}")
    return found


def total_threads(client) -> int:
    """Steps the cluster runs at once: the scheduler's threads waiting on them."""
    info = client.scheduler_info()
    return sum(worker.get("nthreads", 1) for worker in info.get("workers", {}).values())
