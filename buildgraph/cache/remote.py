"""The remote step cache: one OCI image per step in a registry, tagged `<cache-repo>:<key>`.

Format (FORMAT_VERSION 1):
- tag: the step's cache key itself. Keys are xxh3-128 hex (32 chars), which is a valid tag.
- manifest: an OCI image manifest whose layers are ALL the record's layers, base first, so
  `<cache-repo>:<key>` is an ordinary image (`skopeo inspect`/`copy` work on it). It carries
  the annotation `io.buildgraph.key: <key>`.
- config: an OCI image config (architecture/os of the build platform, rootfs.diff_ids and
  history from the record, `created` = the last history entry's) with the buildgraph metadata
  in an extra top-level object, which OCI readers ignore:
      "io.buildgraph.step": {"format": 1, "key": ..., "created": ..., "buildgraph": <version>,
                             "layers": [<layer digests, base first>]}
  Nothing in it depends on when or where it was exported, so exporting a key again produces
  the same manifest digest.
- the manifest also carries the config itself, verbatim, in the annotation
  `io.buildgraph.step.config`, so one GET reads an entry; a reader uses it only when it hashes to
  the config descriptor's digest, and reads the config blob otherwise (entries written before the
  annotation existed, and configs over MAX_EMBEDDED_CONFIG, have none).

A lookup is one manifest GET per key: a 404 costs what a HEAD would, and a hit needs no second
request. A failing registry raises RegistryError; an entry that is not ours or disagrees with
itself is a miss (`fetch_record` returns None and reports why).
"""

from __future__ import annotations

import functools
import io
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from buildgraph import __version__
from buildgraph.cache.local import LocalStore
from buildgraph.cache.steps import LayerRef, StepRecord
from buildgraph.errors import CacheError, InputError, NotFound
from buildgraph.image import mediatypes as mt
from buildgraph.image.config import HistoryEntry, ImageConfig
from buildgraph.image.oci import (
    Descriptor,
    Manifest,
    Platform,
    canonical_json,
    default_platform,
    parse_document,
    sha256_digest,
)
from buildgraph.registry.reference import Reference

if TYPE_CHECKING:  # the client pulls in requests; a run without a remote cache never needs it
    from buildgraph.registry.client import RegistryClient

STEP_FIELD = "io.buildgraph.step"  # the config's top-level metadata object
KEY_ANNOTATION = "io.buildgraph.key"  # on the manifest
CONFIG_ANNOTATION = "io.buildgraph.step.config"  # on the manifest: the config blob's text
FORMAT_VERSION = 1  # bump when the entry format changes; entries of another format are misses
MAX_CONFIG_SIZE = 4 << 20  # a step config is small; refuse to buffer a huge foreign one
# A bigger config (a very long history) is not copied into the manifest, which registries cap at
# 4 MiB; such an entry costs one more GET to read.
MAX_EMBEDDED_CONFIG = 256 << 10

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class RemoteEntry:
    key: str
    manifest_digest: str
    # the manifest as the lookup read it (verified against manifest_digest); b"" = not read
    manifest: bytes = field(default=b"", compare=False, repr=False)
    media_type: str = field(default="", compare=False)


class InvalidEntry(CacheError):
    """A manifest under a key that is not a buildgraph step entry, or contradicts itself."""


def _ignore(_: str) -> None:
    pass


class RemoteCache:
    """Step records in one registry repository; safe to share between threads."""

    def __init__(
        self,
        client: RegistryClient | Callable[[], RegistryClient],
        repository: Reference,
        *,
        jobs: int = 8,
        lookup_budget: float | None = None,
    ) -> None:
        """`client` may be a factory, called on the first registry request: a run whose every
        step is in the local store then never makes a client (nor imports requests).
        `lookup_budget` bounds the seconds one lookup may take, retries included (a hanging
        registry then costs a build that much, not the whole registry timeout)."""
        self.lookup_budget = lookup_budget
        self._client = None if callable(client) else client
        self._connect = client if callable(client) else None
        self.repository = repository.repository_only()
        self.jobs = max(1, jobs)
        self._lock = threading.Lock()
        # blob digest -> done once the repository has it (set by the first export to need it)
        self._present: dict[str, Future[None]] = {}

    @property
    def client(self) -> RegistryClient:
        with self._lock:
            if self._client is None:
                assert self._connect is not None
                self._client = self._connect()
            return self._client

    def tag(self, key: str) -> Reference:
        return self.repository.with_tag(key)  # InputError if `key` is not a valid tag

    # -- reading ------------------------------------------------------------------------------
    def lookup(self, keys: Iterable[str]) -> dict[str, RemoteEntry]:
        """GET `<repository>:<key>` for every key at once; keys not found are absent."""
        refs = {key: self.tag(key) for key in dict.fromkeys(keys)}

        def get(key: str) -> RemoteEntry | None:
            try:
                found = self.client.get_manifest(
                    refs[key], accept=mt.MANIFESTS, budget=self.lookup_budget
                )
            except NotFound:
                return None
            return RemoteEntry(key, found.digest, found.data, found.media_type)

        found = map_all(get, list(refs), self.jobs)
        return {entry.key: entry for entry in found if entry is not None}

    def fetch_record(
        self, entry: RemoteEntry, *, warn: Callable[[str], None] = _ignore
    ) -> StepRecord | None:
        """The record of `entry`, or None (with the reason passed to `warn`) when the
        manifest under the key is not a valid step entry. Registry failures raise."""
        try:
            return self.read_record(entry)
        except InvalidEntry as err:
            warn(str(err))
            return None

    def read_record(self, entry: RemoteEntry) -> StepRecord:
        """Like fetch_record, but an invalid entry raises InvalidEntry."""
        ref = self.repository.with_digest(entry.manifest_digest)
        data, media_type = entry.manifest, entry.media_type
        if not data:
            response = self.client.get_manifest(ref, accept=mt.MANIFESTS)  # digest verified
            data, media_type = response.data, response.media_type
        manifest = _parse_manifest(data, media_type, entry.key)
        config = _embedded_config(manifest)
        if config is None:
            if manifest.config.size > MAX_CONFIG_SIZE:
                size = manifest.config.size
                raise InvalidEntry(f"cache entry {entry.key} ({ref}): config of {size} bytes")
            buffer = io.BytesIO()
            self.client.fetch_blob(self.repository, manifest.config.digest, buffer)  # verified
            config = buffer.getvalue()
        return _parse_record(config, manifest, entry.key, ref)

    def download_blob(self, blob: Descriptor, store: LocalStore) -> int:
        """Fetch one blob into `store`, verified; the bytes downloaded (0 if it is there)."""
        if store.has_blob(blob.digest):  # another process may have fetched it meanwhile
            return 0
        return store.put_verified(
            blob.digest, lambda out: self.client.fetch_blob(self.repository, blob.digest, out)
        )

    # -- writing ------------------------------------------------------------------------------
    def export(
        self,
        key: str,
        record: StepRecord,
        store: LocalStore,
        *,
        platform: Platform | None = None,
        mount_from: Sequence[Reference] = (),
    ) -> str:
        """Push `record` as `<repository>:<key>`; returns the manifest digest.

        Layers the registry lacks are mounted from a `mount_from` repository where possible,
        else uploaded (each blob is checked once per run, however many entries share it); then
        the config, then the manifest. The tag is written last, so an interrupted export leaves
        no tag pointing at a missing blob. A step is exported because it was built, so its
        entry is new: no HEAD asks first (exporting an entry again rewrites the same tag).
        """
        ref = self.tag(key)
        config = entry_config(key, record, platform or default_platform())
        config_descriptor = Descriptor(mt.OCI_CONFIG, sha256_digest(config), len(config))
        embedded = config if len(config) <= MAX_EMBEDDED_CONFIG else None
        manifest = entry_manifest(key, record, config_descriptor, embedded)
        self.push_layers(record, store, mount_from=mount_from)
        self.client.upload_blob(
            self.repository,
            config_descriptor.digest,
            len(config),
            io.BytesIO(config),
            check=False,  # the config names the key: a new key has a new config
        )
        return self.client.put_manifest(ref, manifest, mt.OCI_MANIFEST)

    def push_layers(
        self,
        record: StepRecord,
        store: LocalStore,
        *,
        mount_from: Sequence[Reference] = (),
        early: bool = False,
    ) -> None:
        """Make every layer of `record` present in the repository (an entry's first part).
        An `early` push, ahead of the entry, leaves the layers whose push has begun elsewhere:
        the entry's own export waits for those."""
        layers = {layer.descriptor.digest: layer.descriptor for layer in record.layers}
        with self._lock:  # most layers are below the step, pushed by an earlier export already
            if early:
                unsure = [blob for digest, blob in layers.items() if digest not in self._present]
            else:
                unsure = [blob for digest, blob in layers.items() if not _pushed(self._present, digest)]
        map_all(lambda blob: self._push_layer(blob, store, mount_from), unsure, self.jobs)

    def _push_layer(
        self, blob: Descriptor, store: LocalStore, mount_from: Sequence[Reference]
    ) -> None:
        """Make `blob` present in the repository, once per run: concurrent exports of entries
        that share a layer wait for the first one's check or upload."""
        with self._lock:
            pending = self._present.get(blob.digest)
            owner = pending is None
            if owner:
                pending = self._present[blob.digest] = Future()
        assert pending is not None
        if not owner:
            pending.result()  # raises what the owner's upload raised
            return
        try:
            self._upload_layer(blob, store, mount_from)
        except BaseException as err:
            with self._lock:
                del self._present[blob.digest]  # a later export may try again
            pending.set_exception(err)
            raise
        pending.set_result(None)

    def _upload_layer(
        self, blob: Descriptor, store: LocalStore, mount_from: Sequence[Reference]
    ) -> None:
        if not mount_from:  # one POST asks whether it is here and, if not, opens the upload
            opener = functools.partial(store.open_blob, blob.digest)  # not here if read remotely
            self.client.push_blob(self.repository, blob.digest, blob.size, opener)
            return
        if self.client.blob_exists(self.repository, blob.digest, pushing=True):
            return
        for source in mount_from:
            if source.repository_only() == self.repository:
                continue
            if self.client.mount_blob(self.repository, blob.digest, source.repository_only()):
                return
        with store.open_blob(blob.digest) as handle:
            self.client.upload_blob(self.repository, blob.digest, blob.size, handle, check=False)


# -- the entry format -----------------------------------------------------------------------------
def entry_config(key: str, record: StepRecord, platform: Platform) -> bytes:
    """The OCI image config of an entry: a valid config plus the STEP_FIELD metadata."""
    created = record.history[-1].created if record.history else ""
    image = ImageConfig(
        platform=platform,
        diff_ids=tuple(layer.diff_id for layer in record.layers),
        history=record.history,
        created=created,
    )
    doc = json.loads(image.to_json())
    doc[STEP_FIELD] = {
        "format": FORMAT_VERSION,
        "key": key,
        "created": created,
        "buildgraph": __version__,
        "layers": [layer.descriptor.digest for layer in record.layers],
    }
    return canonical_json(doc)


def entry_manifest(
    key: str, record: StepRecord, config: Descriptor, embedded: bytes | None = None
) -> bytes:
    """The entry's manifest; `embedded` (the config blob itself) goes into CONFIG_ANNOTATION."""
    layers = tuple(layer.descriptor for layer in record.layers)
    annotations = [(KEY_ANNOTATION, key)]
    if embedded is not None:
        annotations.append((CONFIG_ANNOTATION, embedded.decode()))
    return Manifest(config, layers, mt.OCI_MANIFEST, tuple(annotations)).to_json()


def _parse_manifest(data: bytes, media_type: str, key: str) -> Manifest:
    try:
        manifest = parse_document(data, media_type)
    except InputError as err:
        raise InvalidEntry(f"cache entry {key}: {err}") from err
    if not isinstance(manifest, Manifest) or manifest.media_type != mt.OCI_MANIFEST:
        raise InvalidEntry(f"cache entry {key}: not an OCI image manifest")
    if dict(manifest.annotations).get(KEY_ANNOTATION) != key:
        raise InvalidEntry(f"cache entry {key}: manifest lacks annotation {KEY_ANNOTATION}={key}")
    if manifest.config.media_type != mt.OCI_CONFIG:
        raise InvalidEntry(f"cache entry {key}: config type {manifest.config.media_type!r}")
    return manifest


def _embedded_config(manifest: Manifest) -> bytes | None:
    """The config the manifest carries, if it is exactly the blob its descriptor names."""
    text = dict(manifest.annotations).get(CONFIG_ANNOTATION)
    if not isinstance(text, str):
        return None
    data = text.encode()
    if len(data) != manifest.config.size or sha256_digest(data) != manifest.config.digest:
        return None  # damaged or foreign: the config blob itself decides
    return data


def _parse_record(data: bytes, manifest: Manifest, key: str, where: Reference) -> StepRecord:
    def invalid(reason: str) -> InvalidEntry:
        return InvalidEntry(f"cache entry {key} ({where}): {reason}")

    try:
        doc = json.loads(data)
        meta: Any = doc[STEP_FIELD]
        diff_ids = doc["rootfs"]["diff_ids"]
        history = tuple(HistoryEntry.from_dict(item) for item in doc.get("history") or ())
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        reason = f"config is not a buildgraph step config ({type(err).__name__}: {err})"
        raise invalid(reason) from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise invalid(
            f"unknown entry format {meta.get('format') if isinstance(meta, dict) else meta!r}"
        )
    if meta.get("key") != key:
        raise invalid(f"config records key {meta.get('key')!r}")
    digests = [layer.digest for layer in manifest.layers]
    if meta.get("layers") != digests:
        raise invalid("the config's layer list disagrees with the manifest")
    if not isinstance(diff_ids, list) or len(diff_ids) != len(digests):
        raise invalid(f"{len(digests)} layers but diff_ids {diff_ids!r:.80}")
    if not all(isinstance(diff_id, str) for diff_id in diff_ids):
        raise invalid("diff_ids are not strings")
    layers = tuple(
        LayerRef(blob, diff_id) for blob, diff_id in zip(manifest.layers, diff_ids, strict=True)
    )
    return StepRecord(layers, history)


def _pushed(present: dict[str, Future[None]], digest: str) -> bool:
    """Is the blob known to be in the repository already (its push done, and not failed)?"""
    push = present.get(digest)
    return push is not None and push.done() and push.exception() is None


def map_all(function: Callable[[T], R], items: Sequence[T], jobs: int) -> list[R]:
    """`function` over `items` on up to `jobs` threads; the first failure cancels the rest.
    A single item runs in the calling thread."""
    if len(items) <= 1:
        return [function(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=min(jobs, len(items)))
    try:
        futures = [pool.submit(function, item) for item in items]
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
