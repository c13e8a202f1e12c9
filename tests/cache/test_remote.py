from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import BinaryIO
from pathlib import Path
from urllib.parse import quote

import pytest
import xxhash
from registry_server import RegistryServer
from tcp_proxy import CuttingProxy

from buildgraph.cache.local import LocalStore
from buildgraph.cache.remote import (
    CONFIG_ANNOTATION,
    KEY_ANNOTATION,
    MAX_EMBEDDED_CONFIG,
    STEP_FIELD,
    RemoteCache,
    RemoteEntry,
    entry_config,
    entry_manifest,
)
from buildgraph.cache.steps import LayerRef, StepIndex, StepRecord
from buildgraph.errors import CacheError, DigestMismatch, RegistryError
from buildgraph.image import mediatypes as mt
from buildgraph.image.config import HistoryEntry
from buildgraph.image.layer import write_layer
from buildgraph.image.oci import Descriptor, Platform, sha256_digest
from buildgraph.registry.client import RegistryClient
from buildgraph.registry.reference import Reference, parse_repository

PLATFORM = Platform("linux", "amd64")


# -- helpers ------------------------------------------------------------------------------------
def key_of(text: str) -> str:
    return xxhash.xxh3_128_hexdigest(f"{text}-{uuid.uuid4()}".encode())


def unique_repo(registry: RegistryServer) -> Reference:
    return parse_repository(f"{registry.host}/cache/{uuid.uuid4().hex[:12]}")


def add_layer(store: LocalStore, root: Path, files: dict[str, bytes], **options: str) -> LayerRef:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    with store.ingest() as writer:
        blob = write_layer(root, writer, epoch=0, **options)
    assert writer.digest == blob.digest
    return LayerRef(Descriptor(blob.media_type, blob.digest, blob.size), blob.diff_id)


def make_record(store: LocalStore, tmp_path: Path, count: int = 3) -> StepRecord:
    tag = uuid.uuid4().hex
    layers = tuple(
        add_layer(store, tmp_path / f"layer-{tag}-{i}", {f"file{i}": f"{tag} {i}\n".encode() * 50})
        for i in range(count)
    )
    history = (
        *(
            HistoryEntry(created="2024-01-02T03:04:05Z", created_by=f"RUN {i}")
            for i in range(count)
        ),
        HistoryEntry(created_by="ENV A=1", empty_layer=True),
    )
    return StepRecord(layers, history)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path): (path.stat().st_mtime_ns, path.stat().st_size)
        for path in root.rglob("*")
        if path.is_file()
    }


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(total_timeout=20.0, retries=3, backoff=0.05) as registry_client:
        yield registry_client


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "source").ensure()


# -- one contract, both caches --------------------------------------------------------------------
class LocalSteps:
    """The local pair: layers are already in the store; the index maps key -> record."""

    def __init__(self, store: LocalStore, root: Path) -> None:
        self.blobs = store
        self.index = StepIndex(root / "steps")

    def put(self, key: str, record: StepRecord) -> None:
        self.index.put(key, record)

    def get(self, key: str) -> StepRecord | None:
        return self.index.get(key)


class RemoteSteps:
    """The remote cache: put = export; get = lookup + fetch + download into another store."""

    def __init__(self, cache: RemoteCache, source: LocalStore, root: Path) -> None:
        self.cache, self.source = cache, source
        self.blobs = LocalStore(root / "downloaded").ensure()

    def put(self, key: str, record: StepRecord) -> None:
        self.cache.export(key, record, self.source, platform=PLATFORM)

    def get(self, key: str) -> StepRecord | None:
        entry = self.cache.lookup([key]).get(key)
        record = self.cache.fetch_record(entry) if entry else None
        if record is not None:
            download_layers(self.cache, record, self.blobs)
        return record


def download_layers(cache: RemoteCache, record: StepRecord, store: LocalStore) -> int:
    """Fetch the layers of RECORD that STORE lacks, as a run's remote session does."""
    return sum(cache.download_blob(blob, store) for blob in record.missing_layers(store))


@pytest.fixture(params=["local", "remote"])
def steps(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    store: LocalStore,
    registry: RegistryServer,
    client: RegistryClient,
) -> LocalSteps | RemoteSteps:
    if request.param == "local":
        return LocalSteps(store, tmp_path)
    return RemoteSteps(RemoteCache(client, unique_repo(registry)), store, tmp_path)


class TestStepCacheContract:
    def test_unknown_key_misses(self, steps: LocalSteps | RemoteSteps) -> None:
        assert steps.get(key_of("never put")) is None

    def test_put_then_get_returns_an_equal_record_with_its_blobs(
        self, steps: LocalSteps | RemoteSteps, store: LocalStore, tmp_path: Path
    ) -> None:
        record = make_record(store, tmp_path)
        key = key_of("a")
        steps.put(key, record)
        assert steps.get(key) == record
        assert all(steps.blobs.has_blob(layer.descriptor.digest) for layer in record.layers)

    def test_keys_are_kept_apart(
        self, steps: LocalSteps | RemoteSteps, store: LocalStore, tmp_path: Path
    ) -> None:
        first, second = make_record(store, tmp_path, 1), make_record(store, tmp_path, 2)
        first_key, second_key = key_of("first"), key_of("second")
        steps.put(first_key, first)
        steps.put(second_key, second)
        assert steps.get(first_key) == first
        assert steps.get(second_key) == second
        assert steps.get(key_of("third")) is None

    def test_put_twice_is_harmless(
        self, steps: LocalSteps | RemoteSteps, store: LocalStore, tmp_path: Path
    ) -> None:
        record = make_record(store, tmp_path)
        key = key_of("twice")
        steps.put(key, record)
        steps.put(key, record)
        assert steps.get(key) == record

    def test_a_record_without_layers(self, steps: LocalSteps | RemoteSteps) -> None:
        record = StepRecord((), (HistoryEntry(created_by="ENV A=1", empty_layer=True),))
        key = key_of("empty")
        steps.put(key, record)
        assert steps.get(key) == record


# -- the remote cache itself ----------------------------------------------------------------------
def test_export_lookup_fetch_download(
    registry: RegistryServer, client: RegistryClient, store: LocalStore, tmp_path: Path
) -> None:
    cache = RemoteCache(client, unique_repo(registry))
    record = make_record(store, tmp_path)
    key, other = key_of("exported"), key_of("not exported")
    digest = cache.export(key, record, store, platform=PLATFORM)

    assert cache.lookup([key, other, key]) == {key: RemoteEntry(key, digest)}
    assert cache.fetch_record(RemoteEntry(key, digest)) == record

    fresh = LocalStore(tmp_path / "fresh").ensure()
    fresh.put_blob(store.read_blob(record.layers[0].descriptor.digest), mt.OCI_LAYER_GZIP)
    expected = sum(layer.descriptor.size for layer in record.layers[1:])
    assert download_layers(cache, record, fresh) == expected
    assert all(fresh.has_blob(layer.descriptor.digest) for layer in record.layers)
    assert download_layers(cache, record, fresh) == 0


def test_the_manifest_is_an_annotated_oci_manifest(
    registry: RegistryServer, client: RegistryClient, store: LocalStore, tmp_path: Path
) -> None:
    repo = unique_repo(registry)
    record = make_record(store, tmp_path)
    key = key_of("annotated")
    RemoteCache(client, repo).export(key, record, store, platform=PLATFORM)
    got = client.get_manifest(repo.with_tag(key))
    doc = json.loads(got.data)
    assert got.media_type == doc["mediaType"] == mt.OCI_MANIFEST
    assert set(doc["annotations"]) == {KEY_ANNOTATION, CONFIG_ANNOTATION}
    assert doc["annotations"][KEY_ANNOTATION] == key
    assert doc["config"]["mediaType"] == mt.OCI_CONFIG
    config = io.BytesIO()
    client.fetch_blob(repo, doc["config"]["digest"], config)
    assert doc["annotations"][CONFIG_ANNOTATION].encode() == config.getvalue()  # verbatim
    assert [layer["digest"] for layer in doc["layers"]] == [
        layer.descriptor.digest for layer in record.layers
    ]


def test_a_hit_is_read_from_its_manifest_alone(
    registry: RegistryServer, client: RegistryClient, store: LocalStore, tmp_path: Path
) -> None:
    cache = RemoteCache(client, unique_repo(registry))
    record = make_record(store, tmp_path)
    key = key_of("one request")
    cache.export(key, record, store, platform=PLATFORM)
    entry = cache.lookup([key])[key]

    def no_blob_reads(*args: object) -> int:
        raise AssertionError("the config blob was read")

    client.fetch_blob = no_blob_reads  # type: ignore[method-assign]
    assert cache.fetch_record(entry) == record


@pytest.mark.parametrize("embedded", ["damaged", "absent"])
def test_without_a_usable_embedded_config_the_config_blob_is_read(
    registry: RegistryServer,
    client: RegistryClient,
    store: LocalStore,
    tmp_path: Path,
    embedded: str,
) -> None:
    """An entry written before the annotation existed, or one whose copy does not hash to the
    config digest: the config blob decides, and the record is the same."""
    repo = unique_repo(registry)
    cache = RemoteCache(client, repo)
    record = make_record(store, tmp_path)
    key = key_of(f"embedded {embedded}")
    cache.export(key, record, store, platform=PLATFORM)
    manifest = json.loads(client.get_manifest(repo.with_tag(key)).data)
    if embedded == "damaged":
        manifest["annotations"][CONFIG_ANNOTATION] = manifest["annotations"][
            CONFIG_ANNOTATION
        ].replace("RUN 0", "RUN 9")
    else:
        del manifest["annotations"][CONFIG_ANNOTATION]
    client.put_manifest(repo.with_tag(key), json.dumps(manifest).encode(), mt.OCI_MANIFEST)
    reads: list[str] = []
    fetch_blob = client.fetch_blob

    def counted(repository: Reference, digest: str, out: BinaryIO) -> int:
        reads.append(digest)
        return fetch_blob(repository, digest, out)

    client.fetch_blob = counted  # type: ignore[method-assign]
    assert cache.fetch_record(cache.lookup([key])[key]) == record
    assert reads == [manifest["config"]["digest"]]


def test_a_huge_config_is_not_copied_into_the_manifest(
    registry: RegistryServer, client: RegistryClient, store: LocalStore, tmp_path: Path
) -> None:
    repo = unique_repo(registry)
    cache = RemoteCache(client, repo)
    small = make_record(store, tmp_path, 1)
    long_step = HistoryEntry(created_by="RUN " + "x" * MAX_EMBEDDED_CONFIG)
    record = StepRecord(small.layers, (*small.history, long_step))
    key = key_of("huge config")
    cache.export(key, record, store, platform=PLATFORM)
    manifest = json.loads(client.get_manifest(repo.with_tag(key)).data)
    assert set(manifest["annotations"]) == {KEY_ANNOTATION}
    assert manifest["config"]["size"] > MAX_EMBEDDED_CONFIG
    assert cache.fetch_record(cache.lookup([key])[key]) == record  # from the config blob


def test_an_entry_is_an_ordinary_image_for_skopeo(
    registry: RegistryServer, client: RegistryClient, store: LocalStore, tmp_path: Path
) -> None:
    repo = unique_repo(registry)
    record = make_record(store, tmp_path)
    key = key_of("skopeo")
    digest = RemoteCache(client, repo).export(key, record, store, platform=PLATFORM)
    image = f"docker://{repo.name}:{key}"

    def skopeo(*args: str) -> str:
        command = ["skopeo", *args]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout

    inspected = json.loads(skopeo("inspect", "--tls-verify=false", image))
    assert inspected["Digest"] == digest
    assert inspected["Layers"] == [layer.descriptor.digest for layer in record.layers]
    assert (inspected["Os"], inspected["Architecture"]) == ("linux", "amd64")
    config = json.loads(skopeo("inspect", "--tls-verify=false", "--raw", "--config", image))
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in record.layers]
    assert config[STEP_FIELD]["key"] == key
    assert len(config["history"]) == len(record.history)
    # copy checks every blob against its digest on the way
    skopeo("copy", "--src-tls-verify=false", image, f"oci:{tmp_path / 'copy'}:step")
    assert (tmp_path / "copy" / "blobs" / "sha256" / digest.removeprefix("sha256:")).is_file()


def test_export_again_uploads_no_layer(
    fresh_registry: RegistryServer, client: RegistryClient, store: LocalStore, tmp_path: Path
) -> None:
    record = make_record(store, tmp_path)
    key = key_of("again")
    repository = unique_repo(fresh_registry)
    digest = RemoteCache(client, repository).export(key, record, store, platform=PLATFORM)
    blobs = fresh_registry.storage / "docker/registry/v2/blobs/sha256"
    layers = [
        blobs / d[:2] / d / "data"
        for d in (layer.descriptor.digest.removeprefix("sha256:") for layer in record.layers)
    ]
    before = {path: path.stat().st_mtime_ns for path in layers}
    again = RemoteCache(client, repository)  # a new run: nothing remembered
    assert again.export(key, record, store, platform=PLATFORM) == digest  # the same entry
    assert {path: path.stat().st_mtime_ns for path in layers} == before  # no layer sent again


def test_a_new_layer_costs_a_post_and_a_put_and_a_present_one_a_post(
    logged_registry: RegistryServer, client: RegistryClient, store: LocalStore, tmp_path: Path
) -> None:
    """No HEAD: the POST that opens a layer's upload first asks to mount the layer from the
    repository itself, which the registry does (201) when the layer is there already."""
    record = make_record(store, tmp_path, count=2)
    repository = unique_repo(logged_registry)
    digests = [layer.descriptor.digest for layer in record.layers]

    def layer_requests(start: int) -> list[tuple[str, str]]:
        return sorted(
            (method, digest)
            for method, path in logged_registry.requests()[start:]
            for digest in digests
            if quote(digest, safe="") in path or digest in path
        )

    RemoteCache(client, repository).export(key_of("first"), record, store, platform=PLATFORM)
    assert layer_requests(0) == sorted([("POST", d) for d in digests] + [("PUT", d) for d in digests])
    assert "HEAD" not in {method for method, _ in logged_registry.requests()}
    seen = len(logged_registry.requests())
    again = RemoteCache(client, repository)  # a new run: nothing remembered
    key = key_of("second")
    again.export(key, record, store, platform=PLATFORM)
    assert layer_requests(seen) == sorted(("POST", d) for d in digests)  # mounted, not sent
    found = again.lookup([key])[key]
    assert again.fetch_record(found) == record


def test_export_mounts_blobs_from_another_repository(
    registry: RegistryServer, client: RegistryClient, store: LocalStore, tmp_path: Path
) -> None:
    first, second = unique_repo(registry), unique_repo(registry)
    record = make_record(store, tmp_path)
    RemoteCache(client, first).export(key_of("one"), record, store, platform=PLATFORM)
    empty = LocalStore(tmp_path / "empty").ensure()  # an upload would have nothing to read
    cache = RemoteCache(client, second)
    with pytest.raises(CacheError, match="missing"):
        cache.export(key_of("unmounted"), record, empty, platform=PLATFORM)
    key = key_of("mounted")
    digest = cache.export(key, record, empty, platform=PLATFORM, mount_from=[first])
    assert cache.lookup([key]) == {key: RemoteEntry(key, digest)}
    assert cache.fetch_record(RemoteEntry(key, digest)) == record


def test_the_same_record_exports_to_the_same_digest(
    registry: RegistryServer, client: RegistryClient, store: LocalStore, tmp_path: Path
) -> None:
    record = make_record(store, tmp_path)
    key = key_of("stable")
    one = RemoteCache(client, unique_repo(registry)).export(key, record, store, platform=PLATFORM)
    two = RemoteCache(client, unique_repo(registry)).export(key, record, store, platform=PLATFORM)
    assert one == two


# -- faults ----------------------------------------------------------------------------------------
def test_a_stopped_registry_fails_the_lookup_quickly(fresh_registry: RegistryServer) -> None:
    repo = unique_repo(fresh_registry)
    fresh_registry.stop()
    with RegistryClient(total_timeout=2.0, retries=2, backoff=0.05) as client:
        started = time.monotonic()
        with pytest.raises(RegistryError):
            RemoteCache(client, repo).lookup([key_of(str(i)) for i in range(20)])
    assert time.monotonic() - started < 5


def test_a_corrupt_layer_in_the_registry_is_refused(
    fresh_registry: RegistryServer, client: RegistryClient, store: LocalStore, tmp_path: Path
) -> None:
    cache = RemoteCache(client, unique_repo(fresh_registry))
    record = make_record(store, tmp_path, 1)
    key = key_of("corrupt")
    cache.export(key, record, store, platform=PLATFORM)
    digest = record.layers[0].descriptor.digest
    hexdigest = digest.removeprefix("sha256:")
    blobs = fresh_registry.storage / "docker" / "registry" / "v2" / "blobs" / "sha256"
    data = blobs / hexdigest[:2] / hexdigest / "data"
    content = bytearray(data.read_bytes())
    content[len(content) // 2] ^= 0xFF  # same size: the registry serves it without noticing
    data.write_bytes(bytes(content))

    fresh = LocalStore(tmp_path / "fresh").ensure()
    with pytest.raises(DigestMismatch):
        download_layers(cache, record, fresh)
    assert not fresh.has_blob(digest)
    assert not list((fresh.root / "ingest").iterdir())


class UploadCuttingProxy(CuttingProxy):
    """A CuttingProxy that cuts what the client sends (uploads) instead of the responses."""

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for source, dest, limit in (
                (client, upstream, self.cut_after),
                (upstream, client, None),
            ):
                threading.Thread(target=self._pipe, args=(source, dest, limit), daemon=True).start()


def test_an_export_cut_off_leaves_no_tag(
    registry: RegistryServer, client: RegistryClient, store: LocalStore, tmp_path: Path
) -> None:
    repo = unique_repo(registry)
    big = add_layer(store, tmp_path / "big", {"random": os.urandom(4 << 20)}, compression="none")
    record = StepRecord((big,), (HistoryEntry(created_by="COPY random /"),))
    key = key_of("cut")
    proxy = UploadCuttingProxy(registry.port, cut_after=300_000)
    try:
        proxied = Reference(f"127.0.0.1:{proxy.port}", repo.repository)
        cut_client = RegistryClient(total_timeout=10.0, retries=1, backoff=0.05)
        with cut_client, pytest.raises(RegistryError):
            RemoteCache(cut_client, proxied).export(key, record, store, platform=PLATFORM)
    finally:
        proxy.close()
    assert proxy.cuts >= 1
    assert not client.blob_exists(repo, big.descriptor.digest)  # cut during that upload
    cache = RemoteCache(client, repo)
    assert cache.lookup([key]) == {}
    digest = cache.export(key, record, store, platform=PLATFORM)  # a clean retry completes it
    assert cache.lookup([key]) == {key: RemoteEntry(key, digest)}


# Each case turns a good entry (config document, manifest annotations) into a bad one.
Damage = Callable[[dict, dict[str, str]], tuple[bytes, dict[str, str]]]


def _foreign_config(doc: dict, notes: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    del doc[STEP_FIELD]
    return json.dumps(doc).encode(), notes


def _no_annotation(doc: dict, notes: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return json.dumps(doc).encode(), {}


def _other_key(doc: dict, notes: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    doc[STEP_FIELD]["key"] = "0" * 32
    return json.dumps(doc).encode(), notes


def _reordered_layers(doc: dict, notes: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    doc[STEP_FIELD]["layers"].reverse()
    return json.dumps(doc).encode(), notes


def _short_diff_ids(doc: dict, notes: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    doc["rootfs"]["diff_ids"].pop()
    return json.dumps(doc).encode(), notes


def _future_format(doc: dict, notes: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    doc[STEP_FIELD]["format"] = 99
    return json.dumps(doc).encode(), notes


def _not_json(doc: dict, notes: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    return b"\x00 not json", notes


MALFORMED: list[tuple[Damage, str]] = [
    (_foreign_config, "not a buildgraph step config"),
    (_no_annotation, "lacks annotation"),
    (_other_key, "records key"),
    (_reordered_layers, "disagrees with the manifest"),
    (_short_diff_ids, "diff_ids"),
    (_future_format, "unknown entry format"),
    (_not_json, "not a buildgraph step config"),
]


@pytest.mark.parametrize("embed", [False, True], ids=["config blob", "embedded config"])
@pytest.mark.parametrize(("damage", "reason"), MALFORMED)
def test_a_malformed_entry_is_a_miss_with_a_reason(
    registry: RegistryServer,
    client: RegistryClient,
    store: LocalStore,
    tmp_path: Path,
    damage: Damage,
    reason: str,
    embed: bool,
) -> None:
    repo = unique_repo(registry)
    cache = RemoteCache(client, repo)
    record = make_record(store, tmp_path, 2)
    cache.export(key_of("good"), record, store, platform=PLATFORM)  # puts the layers there
    key = key_of("bad")
    doc = json.loads(entry_config(key, record, PLATFORM))
    config, notes = damage(doc, {KEY_ANNOTATION: key})
    config_blob = Descriptor(mt.OCI_CONFIG, sha256_digest(config), len(config))
    store.put_blob(config, mt.OCI_CONFIG)
    with store.open_blob(config_blob.digest) as handle:
        client.upload_blob(repo, config_blob.digest, config_blob.size, handle)
    manifest = json.loads(entry_manifest(key, record, config_blob))
    if notes and embed:
        notes[CONFIG_ANNOTATION] = config.decode(errors="surrogateescape")
    if notes:
        manifest["annotations"] = notes
    else:
        del manifest["annotations"]
    client.put_manifest(repo.with_tag(key), json.dumps(manifest).encode(), mt.OCI_MANIFEST)

    entry = cache.lookup([key])[key]
    reasons: list[str] = []
    assert cache.fetch_record(entry, warn=reasons.append) is None
    assert len(reasons) == 1
    assert reason in reasons[0]
    assert key in reasons[0]
