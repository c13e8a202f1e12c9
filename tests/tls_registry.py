"""A registry that needs a login over TLS, as CI registries do: a CA of the test's own
(trustme) and htpasswd (Basic) auth on 127.0.0.1. Shared by the auth and executor tests."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import trustme
from registry_server import RegistryServer


def make_tls_ca(root: Path) -> tuple[Path, Path, Path]:
    """(CA bundle, certificate chain, key) for a server on 127.0.0.1, written under `root`."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    ca_path, chain_path, key_path = root / "ca.pem", root / "chain.pem", root / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    chain_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key_path))
    return ca_path, chain_path, key_path


@contextlib.contextmanager
def htpasswd_registry(
    root: Path, user: str, password: str, tls: tuple[Path, Path, Path], realm: str
) -> Iterator[RegistryServer]:
    line = subprocess.run(
        ["htpasswd", "-Bbn", user, password], check=True, capture_output=True, text=True
    ).stdout
    (root / "htpasswd").write_text(line)
    auth = {"htpasswd": {"realm": realm, "path": str(root / "htpasswd")}}
    with RegistryServer(root / "registry", auth=auth, tls=tls[1:]) as server:
        yield server
