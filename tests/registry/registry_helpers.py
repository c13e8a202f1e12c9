"""Helpers for the registry tests: blobs with their digests, image pushes, unique repos."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from dataclasses import dataclass

from registry_server import RegistryServer

from buildgraph.image.mediatypes import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST
from buildgraph.registry.auth import Credentials, CredentialStore
from buildgraph.registry.client import RegistryClient
from buildgraph.registry.reference import Reference, parse_repository

USER, PASSWORD = "alice", "s3cret-Pa55word"


class StaticCredentials(CredentialStore):
    """A CredentialStore that knows one registry's credentials, for tests."""

    def __init__(self, registry: str, credentials: Credentials) -> None:
        super().__init__()
        self._only = (registry, credentials)

    def lookup(self, registry: str) -> Credentials | None:
        return self._only[1] if registry == self._only[0] else None


@dataclass(frozen=True)
class Blob:
    data: bytes

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    @property
    def size(self) -> int:
        return len(self.data)


def push_blob(client: RegistryClient, repo: Reference, blob: Blob) -> None:
    client.upload_blob(repo, blob.digest, blob.size, io.BytesIO(blob.data))


def push_image(client: RegistryClient, repo: Reference, tag: str, layer: Blob) -> str:
    """Push a config, `layer` and an OCI manifest; returns the manifest digest."""
    config = Blob(json.dumps({"architecture": "amd64", "os": "linux"}).encode())
    push_blob(client, repo, config)
    push_blob(client, repo, layer)
    manifest = oci_manifest(config, [layer])
    return client.put_manifest(repo.with_tag(tag), manifest, OCI_MANIFEST)


def oci_manifest(config: Blob, layers: list[Blob]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [
            {"mediaType": OCI_LAYER, "digest": layer.digest, "size": layer.size} for layer in layers
        ],
    }
    return json.dumps(doc, indent=2).encode()


def unique_repo(registry: RegistryServer | str, prefix: str = "test") -> Reference:
    host = registry if isinstance(registry, str) else registry.host
    return parse_repository(f"{host}/{prefix}/{uuid.uuid4().hex[:12]}")
