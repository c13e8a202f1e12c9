"""What a Dask worker keeps between the steps of one run: its registry client and cache session."""

from __future__ import annotations

import threading
from collections import OrderedDict

from distributed.diagnostics.plugin import WorkerPlugin

from buildgraph.cache.remote import RemoteCache
from buildgraph.executors.dask_worker import PLUGIN_NAME
from buildgraph.registry.reference import parse_reference

RUNS_KEPT = 4  # coordinators that may share these workers at once


class RunSessions(WorkerPlugin):
    """Per run (`settings.run`), one registry client and one `RemoteCache`: connections are
    kept alive, and a blob known present (or pushed) is not asked about again by the next
    step. Registered by the coordinator; each worker gets its own copy."""

    name = PLUGIN_NAME

    def __init__(self) -> None:
        self._runs: OrderedDict[str, tuple[object, RemoteCache]] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {}  # sent empty: a worker's sessions are its own

    def __setstate__(self, _state: dict) -> None:
        self.__init__()

    def cache(self, settings, connect) -> RemoteCache:
        """The run's remote cache on this worker, made by `connect()` the first time."""
        with self._lock:
            found = self._runs.get(settings.run)
            if found is None:
                client = connect(settings)
                repository = parse_reference(settings.cache_repo, default_tag=None)
                found = self._runs[settings.run] = (client, RemoteCache(client, repository))
                while len(self._runs) > RUNS_KEPT:
                    _, (old, _) = self._runs.popitem(last=False)
                    old.close()  # type: ignore[attr-defined]
            self._runs.move_to_end(settings.run)
            return found[1]

    def teardown(self, worker) -> None:
        with self._lock:
            for client, _ in self._runs.values():
                client.close()  # type: ignore[attr-defined]
            self._runs.clear()
