"""Pushed layers in every compression read by outside tools: skopeo copies them, umoci unpacks
them, gzip tests them."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from dockerd import DOCKERD, private_dockerd
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


def test_a_zstd_push_is_read_by_skopeo_umoci_and_pull(
    tmp_path: Path, big_rootfs: Path, registry: RegistryServer
) -> None:
    cache = tmp_path / "cache"
    run = ["--cache-dir", str(cache)]
    assert (
        main(["image", "import", str(big_rootfs), "-t", "big:1", "--compression", "none", *run])
        == 0
    )
    ref = f"{registry.host}/compression/big:zstd"
    push = ["push", "big:1", ref, "--compression", "zstd", "--insecure-registry", registry.host]
    assert main([*push, *run]) == 0
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    assert [layer["mediaType"] for layer in raw["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+zstd"
    ]
    # umoci 0.4.7 refuses tar+zstd; skopeo reads the zstd stream to re-compress it as gzip.
    copy = tmp_path / "copy"
    skopeo(
        "copy",
        "--src-tls-verify=false",
        "--dest-compress-format",
        "gzip",
        f"docker://{ref}",
        f"oci:{copy}:big",
    )
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{copy}:big", str(bundle)], check=True, capture_output=True
    )
    assert tree(bundle / "rootfs") == tree(big_rootfs)
    fresh = tmp_path / "fresh"
    pulled = tmp_path / "pulled"
    insecure = ["--insecure-registry", registry.host]
    assert main(["pull", ref, "--cache-dir", str(fresh), *insecure]) == 0
    export = ["image", "export", ref, "-o", f"type=local,dest={pulled}", "--cache-dir", str(fresh)]
    assert main(export) == 0
    assert tree(pulled) == tree(big_rootfs)


def test_an_oci_export_with_compression_zstd_has_zstd_layers(
    tmp_path: Path, big_rootfs: Path
) -> None:
    cache = tmp_path / "cache"
    run = ["--cache-dir", str(cache)]
    assert (
        main(["image", "import", str(big_rootfs), "-t", "big:1", "--compression", "none", *run])
        == 0
    )
    layout = tmp_path / "layout"
    assert (
        main(["image", "export", "big:1", "-o", f"type=oci,dest={layout},compression=zstd", *run])
        == 0
    )
    (layer,) = layers_of(layout, "big:1")
    assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    subprocess.run(["zstd", "-tq", str(blob(layout, layer["digest"]))], check=True)
    skopeo("inspect", f"oci:{layout}:big:1")  # the layout and its manifest are valid


BAD = [
    (
        ["push", "big:1", "127.0.0.1:9/x:1", "--compression", "zstd", "--format", "docker"],
        "schema2",
    ),
    (["image", "export", "big:1", "-o", "type=docker,dest=x.tar,compression=zstd"], "applies to"),
    (["image", "export", "big:1", "-o", "type=oci,dest=x,compression=lz4"], "gzip or zstd"),
]


@pytest.mark.parametrize(("argv", "message"), BAD)
def test_a_bad_compression_is_bad_input(
    tmp_path: Path, busybox_rootfs: Path, capsys, argv: list[str], message: str
) -> None:
    run = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["image", "import", str(busybox_rootfs), "-t", "big:1", *run]) == 0
    capsys.readouterr()
    assert main([*argv, *run]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(not Path(DOCKERD).exists(), reason="docker.io (dockerd) not installed")
def test_docker_pulls_and_runs_a_parallel_gzip_image(
    tmp_path: Path, big_rootfs: Path, registry: RegistryServer
) -> None:
    cache = tmp_path / "cache"
    run = ["--cache-dir", str(cache)]
    argv = ["image", "import", str(big_rootfs), "-t", "big:1", "--compression", "none", *run]
    assert main(argv) == 0
    ref = f"{registry.host}/compression/big:docker"
    assert main(["push", "big:1", ref, "--insecure-registry", registry.host, *run]) == 0
    expected = hashlib.sha256((big_rootfs / "data" / "random1.bin").read_bytes()).hexdigest()
    with private_dockerd(tmp_path / "dockerd", [registry.host]) as docker:
        docker.docker("pull", ref)
        done = docker.docker(
            "run", "--rm", "--network", "host", ref, "sha256sum", "/data/random1.bin"
        )
    assert done.stdout.split()[0] == expected
