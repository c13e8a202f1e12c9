"""Fixtures: registries with authentication (htpasswd, token), TLS material, a client."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from registry_helpers import PASSWORD, USER
from registry_server import RegistryServer
from token_issuer import TokenIssuer

from buildgraph.registry.client import RegistryClient


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(total_timeout=20.0, retries=3, backoff=0.05) as registry_client:
        yield registry_client


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[Path, Path]]:
    """(CA bundle, (certificate chain, key)) for a server on 127.0.0.1."""
    root = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca_path, chain_path, key_path = root / "ca.pem", root / "chain.pem", root / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    chain_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key_path))
    return ca_path, (chain_path, key_path)


@pytest.fixture(scope="session")
def htpasswd_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("htpasswd") / "htpasswd"
    line = subprocess.run(
        ["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True
    ).stdout
    path.write_text(line)
    return path


def htpasswd_auth(path: Path) -> dict:
    return {"htpasswd": {"realm": "buildgraph-test", "path": str(path)}}


@pytest.fixture(scope="session")
def htpasswd_registry(
    tmp_path_factory: pytest.TempPathFactory, htpasswd_file: Path
) -> Iterator[RegistryServer]:
    """Basic auth over plain HTTP: distribution 2.8 does not insist on TLS for htpasswd."""
    root = tmp_path_factory.mktemp("htpasswd-registry")
    with RegistryServer(root, auth=htpasswd_auth(htpasswd_file)) as server:
        yield server


@pytest.fixture(scope="session")
def tls_htpasswd_registry(
    tmp_path_factory: pytest.TempPathFactory,
    htpasswd_file: Path,
    tls_ca: tuple[Path, tuple[Path, Path]],
) -> Iterator[RegistryServer]:
    root = tmp_path_factory.mktemp("tls-registry")
    with RegistryServer(root, auth=htpasswd_auth(htpasswd_file), tls=tls_ca[1]) as server:
        yield server


@pytest.fixture
def token_issuer(tmp_path: Path) -> Iterator[TokenIssuer]:
    issuer = TokenIssuer(tmp_path / "issuer", users={USER: PASSWORD}).start()
    try:
        yield issuer
    finally:
        issuer.stop()


@pytest.fixture
def token_registry(tmp_path: Path, token_issuer: TokenIssuer) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path / "registry", auth=token_issuer.registry_auth()) as server:
        yield server
