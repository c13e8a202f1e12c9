"""The executor that carries out a plan on this machine: local cache, remote cache, worker."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from buildgraph.cache.steps import StepIndex, StepRecord
from buildgraph.errors import CacheError, DigestMismatch, RegistryError
from buildgraph.graph.model import Target
from buildgraph.graph.steps import Step
from buildgraph.solver.executor import Unusable
from buildgraph.solver.plan import Action, Plan
from buildgraph.solver.remote import RemoteSession
from buildgraph.worker.execute import Worker

Export = Callable[[Target, StepRecord], object]  # what is done with a finished target's record


def _no_export(_target: Target, _record: StepRecord) -> None:
    return None


@dataclass
class LocalExecutor:
    """Steps run by `worker`; records read from and written to `index`; with `remote`, remote
    entries read (and their layers fetched) and built steps exported there. `records`: the
    local records already read while planning (each is read once)."""

    worker: Worker
    index: StepIndex
    remote: RemoteSession | None = None
    records: Mapping[str, StepRecord] = field(default_factory=dict)
    exporter: Export = _no_export
    title: Callable[[str], str] = str  # a step's title, for warnings (the plan's, once started)

    def start(self, plan: Plan) -> None:
        self.title = plan.graph.title
        self.worker.expect(plan.graph.steps, plan.keys(Action.BUILD))
        if self.remote is not None:  # read the needed remote records in parallel, up front
            self.remote.prefetch(plan.keys(Action.FETCH, Action.USE_REMOTE))

    def use_local(self, key: str) -> StepRecord:
        record = self.records.get(key)
        if record is None:
            try:
                record = self.index.get(key, touch=False)
            except CacheError as err:
                raise Unusable(str(err)) from err
            if record is None:
                raise Unusable("no longer in the local cache")
        if self.remote is None or self.remote.source is None:
            # A record taken from a remote cache keeps its layers there until they are needed;
            # with no remote cache now (gone mid-run), such a step is built here again.
            missing = record.missing_layers(self.worker.store)
            if missing:
                raise Unusable(f"layer {missing[0].digest[:19]} not in the local store")
        self.index.touch(key)  # last use, for `cache prune --older-than`
        return record

    def use_remote(self, key: str) -> StepRecord:
        found = self.remote.record(key) if self.remote is not None else None
        if found is None:
            raise Unusable("the remote cache entry cannot be read")
        self.index.put(key, found)  # its layers are fetched only when something reads them
        return found

    def fetch(self, key: str) -> StepRecord:
        remote = self.remote
        found = remote.record(key) if remote is not None else None
        if remote is None or found is None:
            raise Unusable("the remote cache entry cannot be read")
        try:
            remote.ensure_layers(found)
        except (DigestMismatch, RegistryError) as err:
            if remote.source is not None:  # else its outage was reported once
                title = self.title(key)
                remote.warn(f"remote cache entry for {title} is unusable ({err}); building it")
            remote.forget(key)
            raise Unusable(str(err)) from err
        self.index.put(key, found)
        return found

    def before_build(self) -> None:
        if self.remote is not None:
            self.remote.check_export_access()

    def build(self, key: str, step: Step, inputs: Mapping[str, StepRecord]) -> StepRecord:
        record = self.worker.execute(step, dict(inputs), key)
        self.index.put(key, record)
        if self.remote is not None:
            self.remote.export(key, record)
        return record

    def export(self, target: Target, record: StepRecord) -> object:
        return self.exporter(target, record)

    def cancel(self) -> None:
        self.worker.cancel.set()
