"""One run's use of the remote cache: up-front lookups, lazy layer downloads, background export."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from buildgraph.cache.local import LocalStore
from buildgraph.cache.remote import RemoteCache, RemoteEntry, map_all
from buildgraph.cache.steps import StepRecord
from buildgraph.errors import (
    AuthError,
    BuildgraphError,
    DigestMismatch,
    InputError,
    NotFound,
    RegistryError,
)
from buildgraph.image.oci import Descriptor
from buildgraph.registry.reference import Reference, parse_reference

if TYPE_CHECKING:  # the client pulls in requests; only a registry call needs it
    from buildgraph.registry.client import RegistryClient

Warn = Callable[[str], None]
# Seconds one lookup may take, retries included: a hanging registry costs a run this much
# before its first step (in parallel for every key of a round; then the registry is down).
LOOKUP_BUDGET = 2.0
EMPTY_BLOB = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


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
        # mode=min: steps whose layers those entries will hold, pushed as soon as each is built
        layers_early: set[str] | None = None,
        jobs: int = 4,
    ) -> None:
        self.store = store
        self.source = source
        self.target = target
        self.warn = warn
        self.required = required
        self.export_only = export_only
        self.layers_early = layers_early or set()
        self.hits: dict[str, RemoteEntry] = {}
        self._looked_up: set[str] = set()
        self._records: dict[str, StepRecord | None] = {}
        self.downloaded = 0
        self.exported: list[str] = []
        self.export_errors: list[str] = []
        self._lock = threading.Lock()
        self._exports: list[Future[None]] = []
        self._pool = ThreadPoolExecutor(max_workers=jobs) if target else None
        self._access_checked = target is None
        # blob digest -> its download, shared by every record that needs the blob
        self._downloads: dict[str, Future[None]] = {}
        self._download_pool = ThreadPoolExecutor(max_workers=jobs) if source else None
        self._outage = False  # a registry failed mid-run and was dropped (one warning)

    def _failed(self, what: str, err: BuildgraphError) -> None:
        if isinstance(err, AuthError):  # credentials to fix, not an outage to build through
            raise AuthError(f"remote cache {what} failed: {err}") from err
        if self.required:
            raise err
        self.warn(f"remote cache {what} failed, going on without it: {err}")

    def lookup(self, keys: Iterable[str]) -> None:
        """One manifest GET per key not looked up yet, all at once; the hits join `hits`.
        Records are made from them later, only for the hits a run needs. A registry failure
        drops the remote cache for the run."""
        source = self.source
        wanted = [key for key in dict.fromkeys(keys) if key not in self._looked_up]
        if source is None or not wanted:
            return
        self._looked_up.update(wanted)
        self._guarded(lambda: self.hits.update(source.lookup(wanted)))

    def prefetch(self, keys: Iterable[str]) -> None:
        """Read the records of these hits in parallel, so the scheduler never waits on one (a
        hit whose manifest carries its config costs no request; an older entry one small GET);
        a registry failure drops the remote cache for the run."""
        source = self.source
        wanted = [self.hits[key] for key in keys if key in self.hits and key not in self._records]
        if source is not None and wanted:
            read = functools.partial(self._read, source)
            self._guarded(lambda: map_all(read, wanted, source.jobs))

    def _guarded(self, action: Callable[[], object]) -> None:
        try:
            action()
        except RegistryError as err:
            if self._one_registry():
                self.target = None  # the same outage: one warning for both
                self._access_checked = True
            self.source = None
            self.hits = {}
            self._failed("lookup", err)

    def _one_registry(self) -> bool:
        """Do the lookups and the export go to the same registry (and share its outages)?"""
        source, target = self.source, self.target
        if source is None or target is None:
            return False
        return source.repository.registry == target.repository.registry

    def check_export_access(self) -> None:
        """Called before the first step runs (only a built step is exported): can the export
        repository be pushed to? Mounting the empty blob into the repository itself asks that
        and writes nothing. A run that builds nothing never asks. Refused credentials raise
        AuthError, before anything is built; a failing registry costs the export (and the
        lookups, on the same registry) one warning, or the error when `required`."""
        target = self.target
        if self._access_checked or target is None:
            return
        self._access_checked = True
        try:
            target.client.mount_blob(target.repository, EMPTY_BLOB, target.repository)
        except (RegistryError, NotFound) as err:
            self._export_failed(target, err)

    def _export_failed(self, target: RemoteCache, err: RegistryError | NotFound) -> None:
        """A request to the export repository failed: refused credentials end the run (exit 3);
        an outage drops the export, and the lookups on the same registry, with one warning (or
        the error, when `required`)."""
        if isinstance(err, AuthError):
            raise AuthError(f"remote cache {target.repository}: {err}") from err
        if self._one_registry():
            self.source = None  # a lookup would only wait and fail again
            self.hits = {}
        self.target = None
        self._failed("export", err)

    def record(self, key: str) -> StepRecord | None:
        """The step's record from the remote cache, if it has a usable one (read on first use
        when `prefetch` did not)."""
        if key not in self._looked_up:  # a step no result seemed to need, demanded after all
            self.lookup([key])
        source = self.source
        entry = self.hits.get(key)
        return None if source is None or entry is None else self._read(source, entry)

    def _read(self, source: RemoteCache, entry: RemoteEntry) -> StepRecord | None:
        with self._lock:
            if entry.key in self._records:
                return self._records[entry.key]
        found = source.fetch_record(entry, warn=self.warn)
        with self._lock:
            return self._records.setdefault(entry.key, found)

    def forget(self, key: str) -> None:
        """Stop using the entry under `key` for this run (it turned out unusable)."""
        with self._lock:
            self.hits.pop(key, None)
            self._records[key] = None

    def ensure_layers(self, record: StepRecord) -> None:
        """Download the layers of `record` the local store lacks (when something needs them).
        Each blob is downloaded once, however many records that need it at once share it; a
        blob that fails its digest raises DigestMismatch for every one of them."""
        source, pool = self.source, self._download_pool
        missing = record.missing_layers(self.store)
        if source is None or pool is None or not missing:
            return
        downloads = []
        with self._lock:
            for blob in missing:
                if blob.digest not in self._downloads:
                    self._downloads[blob.digest] = pool.submit(self._download, source, blob)
                downloads.append(self._downloads[blob.digest])
        for download in downloads:
            download.result()

    def _download(self, source: RemoteCache, blob: Descriptor) -> None:
        try:
            size = source.download_blob(blob, self.store)
        except RegistryError as err:
            if _outage(err):  # the step is built here instead, and so is every later one
                self._lost(source, err)
            raise
        with self._lock:
            self.downloaded += size

    def _lost(self, failed: RemoteCache, err: RegistryError) -> None:
        """The registry of `failed` ran out of retries mid-run (or is down already): the
        remote cache on it (lookups, downloads and export alike) is dropped for the rest of
        the run with one warning, so that no later request waits for it. Unless `required`:
        then the error stands (a download's step is built here; an export's fails finish)."""
        if self.required:
            return
        with self._lock:
            first = not self._outage
            self._outage = True
            registry = failed.repository.registry
            if self.source is not None and self.source.repository.registry == registry:
                self.source = None
                self.hits = {}
            if self.target is not None and self.target.repository.registry == registry:
                self.target = None
        if first:
            self.warn(f"remote cache on {registry} failed, going on without it: {err}")

    def export(self, key: str, record: StepRecord) -> None:
        """Push a finished step in the background; never delays the build."""
        target = self.target  # taken now: a later registry failure may drop it meanwhile
        if target is None or self._pool is None:
            return
        entry = self.export_only is None or key in self.export_only
        if entry or key in self.layers_early:  # early layers: the entry's tail is then short
            self._exports.append(self._pool.submit(self._export, target, key, record, entry))

    def export_cached(self, records: dict[str, StepRecord]) -> None:
        """Export the entries of steps this run did not build (found in the local store, or
        read from another repository) that the export repository lacks: `warm --build` leaves
        the remote cache complete, as BuildKit's export does, even for steps built offline or
        while the registry was down. Mode min keeps to its keys. Called after the build: one
        manifest GET per step, and an entry already there costs nothing more."""
        target = self.target
        if self.export_only is not None:
            records = {key: record for key, record in records.items() if key in self.export_only}
        if target is None or not records:
            return
        try:
            present = target.lookup(records.keys())
        except RegistryError as err:
            self._export_failed(target, err)
            return
        source = self.source
        # A layer not here is mounted from the repository the record was read from.
        mount_from = () if source is None else (source.repository,)
        mountable = (
            source is not None
            and source.repository != target.repository
            and source.repository.registry == target.repository.registry
        )
        absent = {
            key: record
            for key, record in records.items()
            if key not in present and (mountable or not record.missing_layers(self.store))
        }
        if absent:
            self.check_export_access()
        target, pool = self.target, self._pool  # no target once the access check failed
        if target is None or pool is None:
            return
        for key, record in absent.items():
            self._exports.append(pool.submit(self._export, target, key, record, True, mount_from))

    def _export(
        self,
        target: RemoteCache,
        key: str,
        record: StepRecord,
        entry: bool,
        mount_from: tuple[Reference, ...] = (),
    ) -> None:
        """The step's entry, or (`entry` False) only its layers, ahead of a later entry's."""
        try:
            if entry:
                target.export(key, record, self.store, mount_from=mount_from)
            else:
                target.push_layers(record, self.store, early=True)
        except BuildgraphError as err:
            if isinstance(err, RegistryError) and _outage(err) and not self.required:
                self._lost(target, err)  # one warning for the outage, not one per entry
                return
            with self._lock:
                self.export_errors.append(f"{key[:12]}: {err}")
            return
        if entry:
            with self._lock:
                self.exported.append(key)

    def finish(self) -> None:
        """Wait for the exports; report failures once."""
        for future in self._exports:
            future.result()
        for pool in (self._pool, self._download_pool):
            if pool is not None:
                pool.shutdown()
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
    layers_early: set[str] | None = None,
) -> RemoteSession | None:
    """The remote cache for this run, or None when no repository is configured. Nothing is
    asked of a registry here: lookups come first, and push access to `target` is checked
    before the first step runs (`check_export_access`)."""
    if not source and not target:
        return None
    connect = _shared(lambda: _best_effort(client))  # one client for both, made when first needed
    try:
        read = (
            RemoteCache(
                connect, parse_reference(source, default_tag=None), lookup_budget=LOOKUP_BUDGET
            )
            if source
            else None
        )
        write = (
            RemoteCache(
                connect, parse_reference(target, default_tag=None), lookup_budget=LOOKUP_BUDGET
            )
            if target
            else None
        )
    except InputError as err:
        raise InputError(f"remote cache: {err}") from err
    return RemoteSession(
        store,
        source=read,
        target=write,
        warn=warn,
        required=required,
        export_only=export_only,
        layers_early=layers_early,
    )


def _outage(err: RegistryError) -> bool:
    """A registry that cannot be reached or keeps failing, as opposed to refused credentials
    or a blob that is not what its digest says."""
    return not isinstance(err, AuthError | DigestMismatch)


def _best_effort(client: Callable[[], RegistryClient]) -> RegistryClient:
    """The cache's client: the run's registry settings, fewer retries (`best_effort`)."""
    made = client()
    try:
        return made.best_effort()
    finally:
        made.close()


def _shared(client: Callable[[], RegistryClient]) -> Callable[[], RegistryClient]:
    """`client`, called once: every later call returns the same client."""
    lock = threading.Lock()
    made: list[RegistryClient] = []

    def connect() -> RegistryClient:
        with lock:
            if not made:
                made.append(client())
            return made[0]

    return connect
