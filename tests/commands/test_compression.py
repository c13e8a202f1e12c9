"""Pushed layers in every compression read by outside tools: skopeo copies them, umoci unpacks
them, gzip tests them."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from registry_server import RegistryServer
from test_image_commands import tree

from buildgraph.cli import main
from buildgraph.image.gzip_members import BLOCK_SIZE

pytestmark = pytest.mark.skipif(
    not (shutil.which("skopeo") and shutil.which("umoci")), reason="skopeo and umoci needed"
)


@pytest.fixture
def big_rootfs(tmp_path: Path, busybox_rootfs: Path) -> Path:
    """busybox plus several MiB of text and random bytes: many gzip members, some stored."""
    root = tmp_path / "rootfs"
    shutil.copytree(busybox_rootfs, root, symlinks=True)
    rnd = random.Random(17)
    data = root / "data"
    data.mkdir()
    for index in range(3):
        (data / f"random{index}.bin").write_bytes(rnd.randbytes(BLOCK_SIZE + index * 1000))
        (data / f"notes{index}.txt").write_bytes(b"COPY --from=builder /app /app\n" * 50_000)
    return root


def skopeo(*argv: str) -> str:
    done = subprocess.run(["skopeo", *argv], check=True, capture_output=True, text=True)
    return done.stdout


def layers_of(layout: Path, name: str) -> list[dict]:
    index = json.loads((layout / "index.json").read_text())
    (entry,) = [
        m
        for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == name
    ]
    manifest = blob(layout, entry["digest"])
    return json.loads(manifest.read_bytes())["layers"]


def blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def test_a_pushed_parallel_gzip_image_is_copied_and_unpacked_by_outside_tools(
    tmp_path: Path, big_rootfs: Path, registry: RegistryServer
) -> None:
    cache = tmp_path / "cache"
    run = ["--cache-dir", str(cache)]
    assert (
        main(["image", "import", str(big_rootfs), "-t", "big:1", "--compression", "none", *run])
        == 0
    )
    ref = f"{registry.host}/compression/big:gzip"
    assert main(["push", "big:1", ref, "--insecure-registry", registry.host, *run]) == 0
    copy = tmp_path / "copy"
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{copy}:big")
    (layer,) = layers_of(copy, "big")
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    subprocess.run(["gzip", "-t", str(blob(copy, layer["digest"]))], check=True)
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{copy}:big", str(bundle)], check=True, capture_output=True
    )
    assert tree(bundle / "rootfs") == tree(big_rootfs)
