"""RegistryClient against a real distribution registry: blobs, manifests, tags, failures."""

from __future__ import annotations

import io
import json
import os
import time

import pytest
from registry_helpers import Blob, oci_manifest, push_blob, push_image, unique_repo
from registry_server import RegistryServer

from buildgraph.errors import DigestMismatch, InputError, NotFound, RegistryError
from buildgraph.image.mediatypes import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
)
from buildgraph.registry.client import RegistryClient

BIG = Blob(os.urandom(3 * 1024 * 1024 + 123))  # crosses the 1 MiB read size


def test_ping(client: RegistryClient, registry: RegistryServer) -> None:
    client.ping(registry.host)


@pytest.mark.parametrize("chunk_size", [None, 1024 * 1024, 7])
def test_upload_then_fetch(
    client: RegistryClient, registry: RegistryServer, chunk_size: int | None
) -> None:
    repo = unique_repo(registry)
    blob = BIG if chunk_size != 7 else Blob(b"a small blob in tiny chunks")
    assert not client.blob_exists(repo, blob.digest)
    client.upload_blob(repo, blob.digest, blob.size, io.BytesIO(blob.data), chunk_size=chunk_size)
    assert client.blob_exists(repo, blob.digest)
    out = io.BytesIO()
    assert client.fetch_blob(repo, blob.digest, out) == blob.size
    assert out.getvalue() == blob.data


def test_upload_reads_from_the_current_position(
    client: RegistryClient, registry: RegistryServer
) -> None:
    repo = unique_repo(registry)
    blob = Blob(b"payload after a header")
    source = io.BytesIO(b"HEADER" + blob.data + b"TRAILER")
    source.seek(6)
    client.upload_blob(repo, blob.digest, blob.size, source)
    out = io.BytesIO()
    client.fetch_blob(repo, blob.digest, out)
    assert out.getvalue() == blob.data


def test_upload_of_existing_blob_is_skipped(
    client: RegistryClient, registry: RegistryServer
) -> None:
    repo = unique_repo(registry)
    blob = Blob(b"already there")
    push_blob(client, repo, blob)
    client.upload_blob(repo, blob.digest, blob.size, io.BytesIO(b""))  # never read


def test_upload_with_wrong_digest_is_rejected(
    client: RegistryClient, registry: RegistryServer
) -> None:
    repo = unique_repo(registry)
    claimed = Blob(b"what we say")
    with pytest.raises(DigestMismatch, match="DIGEST_INVALID"):
        client.upload_blob(repo, claimed.digest, 9, io.BytesIO(b"other one"))
    assert not client.blob_exists(repo, claimed.digest)


def test_source_shorter_than_size_is_refused(
    client: RegistryClient, registry: RegistryServer
) -> None:
    repo = unique_repo(registry)
    blob = Blob(b"0123456789")
    with pytest.raises(InputError, match="ended 5 bytes early"):
        client.upload_blob(repo, blob.digest, 10, io.BytesIO(b"01234"))


def test_mount_across_repositories(client: RegistryClient, registry: RegistryServer) -> None:
    source, target = unique_repo(registry), unique_repo(registry)
    blob = Blob(b"shared layer")
    push_blob(client, source, blob)
    assert client.mount_blob(target, blob.digest, source)
    assert client.blob_exists(target, blob.digest)
    missing = Blob(b"nobody has this")
    assert not client.mount_blob(target, missing.digest, source)
    assert not client.blob_exists(target, missing.digest)


def test_oci_manifest_round_trip(client: RegistryClient, registry: RegistryServer) -> None:
    repo = unique_repo(registry)
    digest = push_image(client, repo, "v1", Blob(b"layer one"))
    got = client.get_manifest(repo.with_tag("v1"))
    assert got.media_type == OCI_MANIFEST
    assert got.digest == digest
    assert json.loads(got.data)["layers"][0]["size"] == 9
    by_digest = client.get_manifest(repo.with_digest(digest))
    assert by_digest.data == got.data
    head = client.head_manifest(repo.with_tag("v1"))
    assert head is not None
    assert (head.data, head.media_type, head.digest) == (b"", OCI_MANIFEST, digest)


def test_docker_manifest_and_list(client: RegistryClient, registry: RegistryServer) -> None:
    repo = unique_repo(registry)
    config, layer = Blob(b'{"os":"linux"}'), Blob(b"gzip layer bytes")
    push_blob(client, repo, config)
    push_blob(client, repo, layer)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG, "digest": config.digest, "size": config.size},
            "layers": [{"mediaType": DOCKER_LAYER_GZIP, "digest": layer.digest, "size": 16}],
        }
    ).encode()
    digest = client.put_manifest(repo.with_tag("docker"), manifest, DOCKER_MANIFEST)
    got = client.get_manifest(repo.with_tag("docker"), accept=[DOCKER_MANIFEST])
    assert (got.media_type, got.digest, got.data) == (DOCKER_MANIFEST, digest, manifest)
    entry = {"mediaType": DOCKER_MANIFEST, "digest": digest, "size": len(manifest),
             "platform": {"architecture": "amd64", "os": "linux"}}  # fmt: skip
    listing = json.dumps(
        {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": [entry]}
    ).encode()
    list_digest = client.put_manifest(repo.with_tag("list"), listing, DOCKER_MANIFEST_LIST)
    got_list = client.get_manifest(repo.with_tag("list"))
    assert (got_list.media_type, got_list.digest) == (DOCKER_MANIFEST_LIST, list_digest)


def test_oci_index_pushed_by_digest(client: RegistryClient, registry: RegistryServer) -> None:
    repo = unique_repo(registry)
    child = push_image(client, repo, "child", Blob(b"index child layer"))
    size = len(client.get_manifest(repo.with_digest(child)).data)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": child, "size": size}],
        }
    ).encode()
    digest = Blob(index).digest
    assert client.put_manifest(repo.with_digest(digest), index, OCI_INDEX) == digest
    got = client.get_manifest(repo.with_digest(digest), accept=[OCI_INDEX])
    assert (got.media_type, got.data) == (OCI_INDEX, index)


def test_put_manifest_with_a_wrong_digest_is_refused(
    client: RegistryClient, registry: RegistryServer
) -> None:
    repo = unique_repo(registry)
    with pytest.raises(DigestMismatch):
        client.put_manifest(repo.with_digest(Blob(b"x").digest), b"{}", OCI_MANIFEST)


def test_manifest_naming_missing_blobs_names_the_error_code(
    client: RegistryClient, registry: RegistryServer
) -> None:
    repo = unique_repo(registry)
    manifest = oci_manifest(Blob(b"missing config"), [])
    with pytest.raises(RegistryError, match="MANIFEST_BLOB_UNKNOWN") as caught:
        client.put_manifest(repo.with_tag("bad"), manifest, OCI_MANIFEST)
    assert registry.host in str(caught.value)


def test_missing_manifest(client: RegistryClient, registry: RegistryServer) -> None:
    ref = unique_repo(registry).with_tag("nope")
    with pytest.raises(NotFound, match=f"manifest unknown: {ref}"):
        client.get_manifest(ref)
    assert client.head_manifest(ref) is None


def test_manifest_digest_must_match_the_reference(
    client: RegistryClient, registry: RegistryServer
) -> None:
    repo = unique_repo(registry)
    push_image(client, repo, "v1", Blob(b"layer"))
    stored = client.get_manifest(repo.with_tag("v1"))
    wrong = Blob(b"another document").digest
    with pytest.raises((DigestMismatch, NotFound)):
        client.get_manifest(repo.with_digest(wrong))
    both = repo.with_tag("v1").with_digest(stored.digest)
    assert client.get_manifest(both).digest == stored.digest


def test_list_tags(client: RegistryClient, registry: RegistryServer) -> None:
    repo = unique_repo(registry)
    layer = Blob(b"tagged layer")
    for tag in ("a", "b", "c"):
        push_image(client, repo, tag, layer)
    assert sorted(client.list_tags(repo)) == ["a", "b", "c"]
    assert sorted(client.list_tags(repo, page_size=2)) == ["a", "b", "c"]
    with pytest.raises(NotFound):
        client.list_tags(unique_repo(registry))


def test_missing_blob(client: RegistryClient, registry: RegistryServer) -> None:
    repo = unique_repo(registry)
    with pytest.raises(NotFound, match="BLOB_UNKNOWN"):
        client.fetch_blob(repo, Blob(b"absent").digest, io.BytesIO())


def test_corrupt_blob_raises_digest_mismatch_before_the_end_is_written(
    client: RegistryClient, fresh_registry: RegistryServer
) -> None:
    repo = unique_repo(fresh_registry)
    push_blob(client, repo, BIG)
    hex_digest = BIG.digest.split(":")[1]
    data_file = (
        fresh_registry.storage
        / f"docker/registry/v2/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data"
    )
    corrupt = bytearray(data_file.read_bytes())
    corrupt[-10:] = b"XXXXXXXXXX"  # same length: the registry serves it as it is
    data_file.write_bytes(bytes(corrupt))
    out = io.BytesIO()
    with pytest.raises(DigestMismatch, match=BIG.digest):
        client.fetch_blob(repo, BIG.digest, out)
    assert len(out.getvalue()) < BIG.size  # the last chunk, with the bad bytes, is held back


def test_stopped_registry_fails_within_the_time_limit(
    fresh_registry: RegistryServer,
) -> None:
    repo = unique_repo(fresh_registry)
    fresh_registry.stop()
    client = RegistryClient(total_timeout=2.0, retries=20, backoff=0.1)
    started = time.monotonic()
    with pytest.raises(RegistryError) as caught:
        client.get_manifest(repo.with_tag("latest"))
    assert time.monotonic() - started < 4.0
    message = str(caught.value)
    assert message == f"registry {fresh_registry.host} unreachable: connection refused"


def test_bad_digest_argument_is_an_input_error(
    client: RegistryClient, registry: RegistryServer
) -> None:
    with pytest.raises(InputError, match="64 lowercase hex"):
        client.blob_exists(unique_repo(registry), "sha256:abc")
