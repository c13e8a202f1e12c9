"""One run's use of the remote cache: up-front lookups, lazy layer downloads, background export."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from buildgraph.cache.local import LocalStore
from buildgraph.cache.remote import RemoteCache, RemoteEntry
from buildgraph.cache.steps import StepRecord
from buildgraph.errors import BuildgraphError, RegistryError
from buildgraph.registry.reference import parse_reference

if TYPE_CHECKING:  # the client pulls in requests; only a registry call needs it
    from buildgraph.registry.client import RegistryClient

Warn = Callable[[str], None]


class RemoteSession:
    """Reads from `source`, writes to `target` (either may be None). A failing registry costs
    one warning and the build goes on locally, unless `required`."""

    def __init__(
        self,
        store: LocalStore,
        *,
        source: RemoteCache | None,
        target: RemoteCache | None,
        warn: Warn,
        required: bool = False,
        export_only: set[str] | None = None,  # mode=min: just these keys (the targets' images)
        jobs: int = 4,
    ) -> None:
        self.store = store
        self.source = source
        self.target = target
        self.warn = warn
        self.required = required
        self.export_only = export_only
        self.hits: dict[str, RemoteEntry] = {}
        self._records: dict[str, StepRecord | None] = {}
        self.downloaded = 0
        self.exported: list[str] = []
        self.export_errors: list[str] = []
        self._lock = threading.Lock()
        self._exports: list[Future[None]] = []
        self._pool = ThreadPoolExecutor(max_workers=jobs) if target else None

    def _failed(self, what: str, err: BuildgraphError) -> None:
        if self.required:
            raise err
        self.warn(f"remote cache {what} failed, going on without it: {err}")

    def lookup(self, keys: Iterable[str]) -> None:
        if self.source is None:
            return
        try:
            self.hits = self.source.lookup(keys)
            self._records = self._read_all(self.hits)
        except RegistryError as err:
            self.source = None
            self.hits = {}
            self._failed("lookup", err)

    def _read_all(self, hits: dict[str, RemoteEntry]) -> dict[str, StepRecord | None]:
        """Every hit's record, read in parallel up front (a hit costs two small GETs)."""
        assert self.source is not None
        source = self.source
        with ThreadPoolExecutor(max_workers=max(1, source.jobs)) as pool:
            found = pool.map(
                lambda entry: source.fetch_record(entry, warn=self.warn), hits.values()
            )
            return dict(zip(hits, found, strict=True))

    def record(self, key: str) -> StepRecord | None:
        """The step's record from the remote cache, if it has a usable one."""
        if key not in self.hits or self.source is None:
            return None
        return self._records.get(key)

    def ensure_layers(self, record: StepRecord) -> None:
        """Download the layers of `record` the local store lacks (when something needs them)."""
        if self.source is None or all(
            self.store.has_blob(layer.descriptor.digest) for layer in record.layers
        ):
            return
        size = self.source.download_layers(record, self.store)
        with self._lock:
            self.downloaded += size

    def export(self, key: str, record: StepRecord) -> None:
        """Push a finished step in the background; never delays the build."""
        if self._pool is None or (self.export_only is not None and key not in self.export_only):
            return
        self._exports.append(self._pool.submit(self._export, key, record))

    def _export(self, key: str, record: StepRecord) -> None:
        assert self.target is not None
        try:
            self.target.export(key, record, self.store)
            with self._lock:
                self.exported.append(key)
        except BuildgraphError as err:
            with self._lock:
                self.export_errors.append(f"{key[:12]}: {err}")

    def finish(self) -> None:
        """Wait for the exports; report failures once."""
        for future in self._exports:
            future.result()
        if self._pool is not None:
            self._pool.shutdown()
        if self.export_errors:
            message = f"{len(self.export_errors)} cache exports failed: {self.export_errors[0]}"
            if self.required:
                raise RegistryError(message)
            self.warn(message)


def remote_session(
    store: LocalStore,
    client: Callable[[], RegistryClient],
    *,
    source: str | None,
    target: str | None,
    warn: Callable[[str], None],
    required: bool,
    export_only: set[str] | None,
) -> RemoteSession | None:
    """The remote cache for this run, or None when no repository is configured."""
    if not source and not target:
        return None
    read = RemoteCache(client(), parse_reference(source, default_tag=None)) if source else None
    write = RemoteCache(client(), parse_reference(target, default_tag=None)) if target else None
    return RemoteSession(
        store, source=read, target=write, warn=warn, required=required, export_only=export_only
    )
