"""Retries, broken streams, lying registries, pagination and redirects, through a real server
that plays scripted answers in front of the real registry."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from collections.abc import Iterator
from typing import BinaryIO

import pytest
from registry_helpers import Blob, StaticCredentials, push_blob, push_image, unique_repo
from registry_server import RegistryServer
from scripted_server import Answer, ScriptedServer

from buildgraph.errors import AuthError, DigestMismatch, RegistryError
from buildgraph.image.mediatypes import OCI_MANIFEST
from buildgraph.registry.auth import Credentials
from buildgraph.registry.client import RegistryClient
from buildgraph.registry.reference import Reference

PAYLOAD = Blob(os.urandom(2 * 1024 * 1024 + 7))


@pytest.fixture
def scripted(registry: RegistryServer) -> Iterator[ScriptedServer]:
    server = ScriptedServer(registry.url, [])
    try:
        yield server
    finally:
        server.stop()


def _client(**options: float) -> RegistryClient:
    settings = {"total_timeout": 20.0, "retries": 3, "backoff": 0.05, **options}
    return RegistryClient(**settings)  # type: ignore[arg-type]


def _via(server: ScriptedServer, repo: Reference) -> Reference:
    return Reference(server.host, repo.repository, repo.tag, repo.digest)


def _count(server: ScriptedServer, fragment: str) -> int:
    return sum(fragment in line for line in server.seen)


def test_5xx_is_retried_then_succeeds(registry: RegistryServer, scripted: ScriptedServer) -> None:
    repo = unique_repo(registry)
    with _client() as client:
        digest = push_image(client, repo, "v1", Blob(b"retried layer"))
        scripted.script.append(Answer("/manifests/v1", 503, times=2))
        got = client.get_manifest(_via(scripted, repo).with_tag("v1"))
    assert got.digest == digest
    assert _count(scripted, "GET /v2/" + repo.repository + "/manifests/v1") == 3


@pytest.mark.parametrize("status", [400, 404, 405])
def test_a_registry_that_refuses_to_mount_gets_a_plain_upload(
    registry: RegistryServer, scripted: ScriptedServer, status: int
) -> None:
    """push_blob opens with a mount POST from the repository itself; a registry that refuses
    such a mount instead of opening an upload (202) is sent the blob the ordinary way."""
    repo = _via(scripted, unique_repo(registry))
    scripted.script.append(Answer("mount=", status, body=b'{"errors": []}'))

    def source() -> contextlib.AbstractContextManager[BinaryIO]:
        return contextlib.nullcontext(io.BytesIO(PAYLOAD.data))

    def nothing() -> contextlib.AbstractContextManager[BinaryIO]:
        raise AssertionError("the blob was read, though the registry has it")

    with _client() as client:
        assert client.push_blob(repo, PAYLOAD.digest, len(PAYLOAD.data), source)
        assert client.blob_exists(repo, PAYLOAD.digest)
        # there now: the mount answers 201, the blob is neither read nor sent
        assert not client.push_blob(repo, PAYLOAD.digest, len(PAYLOAD.data), nothing)
    assert _count(scripted, "mount=") == 2
    assert _count(scripted, "PUT ") == 1


def test_a_manifest_cut_off_midway_is_read_again(
    registry: RegistryServer, scripted: ScriptedServer
) -> None:
    repo = unique_repo(registry)
    with _client() as client:
        digest = push_image(client, repo, "v1", Blob(b"cut manifest layer"))
        scripted.script.append(Answer(f"GET /v2/{repo.repository}/manifests/v1", cut_after=40))
        got = client.get_manifest(_via(scripted, repo).with_tag("v1"))
    assert got.digest == digest
    assert _count(scripted, f"GET /v2/{repo.repository}/manifests/v1") == 2


def test_a_manifest_over_4_mib_is_refused_unread(scripted: ScriptedServer) -> None:
    """A hostile registry cannot make a lookup buffer a huge "manifest"; nothing is retried."""
    body = b'{"schemaVersion":2,"annotations":{"a":"' + b"x" * (4 << 20) + b'"}}'
    headers = {"Content-Type": OCI_MANIFEST}
    scripted.script.append(Answer("/manifests/v1", 200, headers, body=body, times=9))
    repo = unique_repo(scripted.host).with_tag("v1")
    with _client() as client, pytest.raises(RegistryError) as caught:
        client.get_manifest(repo)
    assert str(caught.value) == f"registry {scripted.host}: manifest {repo} is over 4 MiB"
    assert _count(scripted, "/manifests/v1") == 1


def test_429_honours_retry_after(registry: RegistryServer, scripted: ScriptedServer) -> None:
    repo = unique_repo(registry)
    with _client(backoff=0.01) as client:
        push_image(client, repo, "v1", Blob(b"rate limited"))
        scripted.script.append(Answer("/manifests/v1", 429, {"Retry-After": "1"}))
        started = time.monotonic()
        client.get_manifest(_via(scripted, repo).with_tag("v1"))
    assert time.monotonic() - started >= 1.0


def test_retry_after_past_the_deadline_gives_up_at_once(scripted: ScriptedServer) -> None:
    scripted.script.append(Answer("/manifests/", 429, {"Retry-After": "30"}, times=9))
    repo = unique_repo(scripted.host).with_tag("v1")
    started = time.monotonic()
    with _client(total_timeout=5.0) as client, pytest.raises(RegistryError) as caught:
        client.get_manifest(repo)
    assert time.monotonic() - started < 2.0
    assert str(caught.value) == f"registry {scripted.host} unreachable: HTTP 429 Too Many Requests"


def test_persistent_5xx_stops_after_the_retries(scripted: ScriptedServer) -> None:
    body = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "down for repairs"}]})
    scripted.script.append(Answer("/manifests/", 503, body=body.encode(), times=99))
    repo = unique_repo(scripted.host).with_tag("v1")
    with _client(retries=2) as client, pytest.raises(RegistryError) as caught:
        client.get_manifest(repo)
    assert str(caught.value) == (
        f"registry {scripted.host} unreachable: HTTP 503 Service Unavailable (UNAVAILABLE)"
    )
    assert "\n" not in str(caught.value)
    assert _count(scripted, "/manifests/") == 3


def test_broken_download_is_retried_into_a_rewound_file(
    registry: RegistryServer, scripted: ScriptedServer
) -> None:
    repo = unique_repo(registry)
    with _client() as client:
        push_blob(client, repo, PAYLOAD)
        scripted.script.append(Answer(f"GET /v2/{repo.repository}/blobs/", cut_after=1_500_000))
        out = io.BytesIO()
        out.write(b"kept prefix:")
        written = client.fetch_blob(_via(scripted, repo), PAYLOAD.digest, out)
    assert written == PAYLOAD.size
    assert out.getvalue() == b"kept prefix:" + PAYLOAD.data
    assert _count(scripted, "/blobs/sha256") == 2


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes = b"") -> None:
        self._inner = io.BytesIO(data)

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        return self._inner.write(data)

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        return self._inner.readinto(buffer)


def test_broken_download_into_an_unseekable_stream_fails(
    registry: RegistryServer, scripted: ScriptedServer
) -> None:
    repo = unique_repo(registry)
    with _client() as client:
        push_blob(client, repo, PAYLOAD)
        scripted.script.append(Answer("/blobs/sha256", cut_after=1_500_000))
        with pytest.raises(RegistryError, match="broke off"):
            client.fetch_blob(_via(scripted, repo), PAYLOAD.digest, _Unseekable())


def test_failed_upload_starts_over_and_cancels_the_first(
    registry: RegistryServer, scripted: ScriptedServer
) -> None:
    repo = _via(scripted, unique_repo(registry))
    scripted.script.append(Answer("PUT ", 500))
    with _client() as client:
        client.upload_blob(repo, PAYLOAD.digest, PAYLOAD.size, io.BytesIO(PAYLOAD.data))
        assert client.blob_exists(repo, PAYLOAD.digest)
    assert _count(scripted, "POST ") == 2
    assert _count(scripted, "DELETE ") == 1  # the abandoned upload


def test_failed_chunked_upload_from_unseekable_source_fails(
    registry: RegistryServer, scripted: ScriptedServer
) -> None:
    repo = _via(scripted, unique_repo(registry))
    scripted.script.append(Answer("PATCH ", 502, times=1))
    blob = Blob(b"0123456789" * 10)
    with _client() as client, pytest.raises(RegistryError, match="cannot be read again"):
        client.upload_blob(repo, blob.digest, blob.size, _Unseekable(blob.data), chunk_size=40)


def test_manifest_whose_digest_header_lies(scripted: ScriptedServer) -> None:
    document = b'{"schemaVersion": 2}'
    liar = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": liar}
    scripted.script.append(Answer("/manifests/v1", 200, headers, document))
    repo = unique_repo(scripted.host)
    with _client() as client, pytest.raises(DigestMismatch, match=liar):
        client.get_manifest(repo.with_tag("v1"))


def test_manifest_that_is_not_the_digest_asked_for(scripted: ScriptedServer) -> None:
    asked = "sha256:" + hashlib.sha256(b"the real one").hexdigest()
    scripted.script.append(Answer("/manifests/", 200, {"Content-Type": OCI_MANIFEST}, b"{}"))
    repo = unique_repo(scripted.host).with_digest(asked)
    with _client() as client, pytest.raises(DigestMismatch, match="content hashes to"):
        client.get_manifest(repo)


def test_tags_follow_link_pagination(scripted: ScriptedServer) -> None:
    repo = unique_repo(scripted.host)
    path = f"/v2/{repo.repository}/tags/list"
    pages = [
        (f"{path}?n=2", ["a", "b"], f'<{path}?last=b&n=2>; rel="next"'),
        (f"{path}?last=b&n=2", ["c", "d"], f"<http://{scripted.host}{path}?last=d&n=2>; rel=next"),
        (f"{path}?last=d&n=2", ["e"], None),
    ]
    for match, tags, link in pages:
        headers = {"Content-Type": "application/json", **({"Link": link} if link else {})}
        body = json.dumps({"name": repo.repository, "tags": tags}).encode()
        scripted.script.append(Answer(match, 200, headers, body))
    with _client() as client:
        assert client.list_tags(repo, page_size=2) == ["a", "b", "c", "d", "e"]


def test_redirect_to_storage_drops_authorization(registry: RegistryServer) -> None:
    storage = ScriptedServer(None, [Answer("/storage/blob", 200, {}, PAYLOAD.data)])
    front = ScriptedServer(None, [])
    port = storage.host.split(":")[1]
    front.script += [
        Answer("/blobs/sha256", 401, {"WWW-Authenticate": 'Basic realm="front"'}),
        Answer("/blobs/sha256", 307, {"Location": f"http://localhost:{port}/storage/blob"}),
    ]
    store = StaticCredentials(front.host, Credentials("frank", "storage-secret"))
    try:
        with RegistryClient(credentials=store, retries=0) as client:
            out = io.BytesIO()
            client.fetch_blob(Reference(front.host, "a/b"), PAYLOAD.digest, out)
    finally:
        storage.stop()
        front.stop()
    assert out.getvalue() == PAYLOAD.data
    assert front.headers[-1]["Authorization"].startswith("Basic ")
    assert "Authorization" not in storage.headers[0]


def test_401_after_a_fresh_token_is_an_auth_error(scripted: ScriptedServer) -> None:
    challenge = {"WWW-Authenticate": 'Basic realm="x"'}
    scripted.script.append(Answer("/manifests/", 401, challenge, times=2))
    store = StaticCredentials(scripted.host, Credentials("u", "p"))
    with RegistryClient(credentials=store) as client, pytest.raises(AuthError):
        client.get_manifest(unique_repo(scripted.host).with_tag("v1"))
    assert _count(scripted, "/manifests/") == 2
