"""A layer never compressed before is compressed while it is uploaded (one streamed PATCH); a
cut stream falls back to uploading the stored copy."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import requests
from registry_server import RegistryServer
from tcp_proxy import CuttingProxy

from buildgraph.cli import main


@pytest.fixture
def cache(tmp_path: Path, busybox_rootfs: Path) -> Path:
    """An image stored uncompressed, with 3 MiB of random data (stored gzip members)."""
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "random.bin").write_bytes(random.Random(9).randbytes(3 << 20))
    (root / "notes.txt").write_text("streamed\n" * 10_000)
    cache = tmp_path / "cache"
    argv = ["image", "import", str(root), "-t", "big:1", "--compression", "none"]
    assert main([*argv, "--cache-dir", str(cache)]) == 0
    return cache


def memo(cache: Path) -> dict:
    (path,) = (cache / "compressed" / "gzip").iterdir()
    return json.loads(path.read_text())


def pushed_layer(host: str, repository: str) -> tuple[str, bytes]:
    accept = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
    manifest = requests.get(f"http://{host}/v2/{repository}/manifests/1", headers=accept).json()
    (layer,) = manifest["layers"]
    blob = requests.get(f"http://{host}/v2/{repository}/blobs/{layer['digest']}").content
    return layer["digest"], blob


def test_a_fresh_layer_is_streamed_then_its_stored_copy_reused(
    cache: Path, logged_registry: RegistryServer
) -> None:
    host = logged_registry.host
    assert main(["push", "big:1", f"{host}/stream/big:1", "--cache-dir", str(cache)]) == 0
    patches = [path for method, path in logged_registry.requests() if method == "PATCH"]
    assert len(patches) == 1  # the layer, streamed while it was compressed
    compressed = memo(cache)
    digest, blob = pushed_layer(host, "stream/big")
    assert digest == compressed["digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
    stored = cache / "blobs" / "sha256" / digest.removeprefix("sha256:")
    assert stored.read_bytes() == blob  # the same bytes went to the store
    # A second push finds the compressed copy: an ordinary upload, no stream.
    assert main(["push", "big:1", f"{host}/again/big:1", "--cache-dir", str(cache)]) == 0
    patches = [path for method, path in logged_registry.requests() if method == "PATCH"]
    assert len(patches) == 1
    assert pushed_layer(host, "again/big")[0] == digest


def test_a_cut_stream_falls_back_to_the_stored_copy(
    cache: Path, fresh_registry: RegistryServer
) -> None:
    proxy = CuttingProxy(fresh_registry.port, cut_request_after=1 << 20)
    try:
        ref = f"127.0.0.1:{proxy.port}/cut/big:1"
        assert main(["push", "big:1", ref, "--cache-dir", str(cache)]) == 0
    finally:
        proxy.close()
    assert proxy.request_cuts == 1
    digest, blob = pushed_layer(fresh_registry.host, "cut/big")
    assert digest == memo(cache)["digest"] == "sha256:" + hashlib.sha256(blob).hexdigest()
