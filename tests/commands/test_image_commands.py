"""End to end: import, images, push, pull, export; checked with skopeo and umoci."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import requests
from registry_server import RegistryServer
from tcp_proxy import CuttingProxy

from buildgraph.cli import main

pytestmark = pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo not installed")


def tree(root: Path) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, content or link target): what must survive a round trip."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        relative = str(path.relative_to(root))
        if path.is_symlink():
            found[relative] = ("link", os.readlink(path), info.st_uid, info.st_gid)
        elif path.is_dir():
            found[relative] = ("dir", info.st_mode, info.st_uid, info.st_gid)
        else:
            found[relative] = ("file", info.st_mode, info.st_uid, info.st_gid, path.read_bytes())
    return found


def run(*argv: str) -> int:
    return main(list(argv))


def skopeo(*argv: str) -> str:
    result = subprocess.run(["skopeo", *argv], check=True, capture_output=True, text=True)
    return result.stdout


@pytest.fixture
def imported(tmp_path: Path, busybox_rootfs: Path) -> Path:
    cache = tmp_path / "cache"
    assert (
        run(
            "image",
            "import",
            str(busybox_rootfs),
            "-t",
            "busybox:latest",
            "--cache-dir",
            str(cache),
        )
        == 0
    )
    return cache


def manifest_digest(cache: Path, name: str) -> str:
    index = json.loads((cache / "index.json").read_text())
    for entry in index["manifests"]:
        if entry["annotations"]["org.opencontainers.image.ref.name"] == name:
            return entry["digest"]
    raise AssertionError(f"{name} not in {cache}")


def test_import_is_readable_by_skopeo_and_umoci(
    imported: Path, busybox_rootfs: Path, tmp_path: Path, capsys
) -> None:
    info = json.loads(skopeo("inspect", f"oci:{imported}:busybox:latest"))
    assert info["Digest"] == manifest_digest(imported, "busybox:latest")
    assert info["Architecture"] == "amd64" and info["Os"] == "linux"
    assert len(info["Layers"]) == 1
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{imported}:busybox:latest", str(bundle)],
        check=True,
        capture_output=True,
    )
    assert tree(bundle / "rootfs") == tree(busybox_rootfs)
    assert run("images", "--cache-dir", str(imported)) == 0
    assert "busybox:latest" in capsys.readouterr().out


def test_import_unpacks_its_layer_once_for_every_later_build(
    imported: Path, busybox_rootfs: Path
) -> None:
    info = json.loads(skopeo("inspect", "--config", f"oci:{imported}:busybox:latest"))
    (diff_id,) = info["rootfs"]["diff_ids"]
    snapshot = imported / "snapshots" / diff_id.removeprefix("sha256:")
    assert tree(snapshot) == tree(busybox_rootfs)  # as a build's overlay lower dir sees it


def test_import_of_a_tarball_equals_import_of_the_directory(
    busybox_rootfs: Path, tmp_path: Path
) -> None:
    tarball = tmp_path / "rootfs.tar.gz"
    subprocess.run(["tar", "-C", str(busybox_rootfs), "-czf", str(tarball), "."], check=True)
    cache = tmp_path / "cache"
    assert run("image", "import", str(tarball), "-t", "bb:tar", "--cache-dir", str(cache)) == 0
    out = tmp_path / "out"
    assert (
        run(
            "image",
            "export",
            "bb:tar",
            "--output",
            f"type=local,dest={out}",
            "--cache-dir",
            str(cache),
        )
        == 0
    )
    assert tree(out) == tree(busybox_rootfs)


def test_import_is_reproducible_with_source_date_epoch(
    busybox_rootfs: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    digests = []
    for name in ("one", "two"):
        cache = tmp_path / name
        assert (
            run("image", "import", str(busybox_rootfs), "-t", "bb", "--cache-dir", str(cache)) == 0
        )
        digests.append(manifest_digest(cache, "bb:latest"))
    assert digests[0] == digests[1]


def test_push_then_skopeo_copy_back_keeps_the_manifest_digest(
    imported: Path, registry: RegistryServer, tmp_path: Path
) -> None:
    ref = f"{registry.host}/roundtrip/busybox:1"
    assert run("push", "busybox:latest", ref, "--cache-dir", str(imported)) == 0
    copy = tmp_path / "copy"
    skopeo("copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{copy}:busybox")
    assert manifest_digest(copy, "busybox") == manifest_digest(imported, "busybox:latest")


def test_an_image_pushed_by_skopeo_as_docker_v2s2_is_pulled(
    imported: Path, registry: RegistryServer, busybox_rootfs: Path, tmp_path: Path
) -> None:
    ref = f"{registry.host}/fromskopeo/busybox:v2s2"
    skopeo(
        "copy",
        "--format",
        "v2s2",
        "--dest-tls-verify=false",
        f"oci:{imported}:busybox:latest",
        f"docker://{ref}",
    )
    fresh = tmp_path / "fresh"
    assert run("pull", ref, "--cache-dir", str(fresh)) == 0
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert (
        run(
            "image",
            "export",
            ref,
            "-o",
            f"type=local,dest={tmp_path / 'root'}",
            "--cache-dir",
            str(fresh),
        )
        == 0
    )
    assert tree(tmp_path / "root") == tree(busybox_rootfs)


def test_pull_selects_the_platform_from_an_index(
    imported: Path, registry: RegistryServer, tmp_path: Path
) -> None:
    ref = f"{registry.host}/multi/busybox:list"
    # skopeo copies our single image; we then write a two-platform index around it by hand.
    skopeo("copy", "--dest-tls-verify=false", f"oci:{imported}:busybox:latest", f"docker://{ref}")
    single = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    del single  # only the digest matters
    digest = manifest_digest(imported, "busybox:latest")
    size = (imported / "blobs/sha256" / digest.removeprefix("sha256:")).stat().st_size
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + "1" * 64,
                "size": 10,
                "platform": {"os": "linux", "architecture": "arm64"},
            },
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": size,
                "platform": {"os": "linux", "architecture": "amd64"},
            },
        ],
    }
    response = requests.put(
        f"http://{registry.host}/v2/multi/busybox/manifests/list",
        data=json.dumps(index),
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
        timeout=10,
    )
    # The registry refuses an index naming a manifest it lacks, so name only present ones.
    if response.status_code >= 400:
        index["manifests"] = index["manifests"][1:]
        response = requests.put(
            f"http://{registry.host}/v2/multi/busybox/manifests/list",
            data=json.dumps(index),
            headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
            timeout=10,
        )
    response.raise_for_status()
    fresh = tmp_path / "fresh"
    assert run("pull", ref, "--platform", "linux/amd64", "--cache-dir", str(fresh)) == 0
    assert manifest_digest(fresh, f"{registry.host}/multi/busybox:list") == digest
    assert run("pull", ref, "--platform", "linux/s390x", "--cache-dir", str(fresh)) == 2


def test_docker_archive_export_is_read_by_skopeo(imported: Path, tmp_path: Path) -> None:
    archive = tmp_path / "busybox.tar"
    assert (
        run(
            "image",
            "export",
            "busybox",
            "-o",
            f"type=docker,dest={archive}",
            "--cache-dir",
            str(imported),
        )
        == 0
    )
    # skopeo finds the image by the tag recorded in the archive's manifest.json
    info = json.loads(skopeo("inspect", f"docker-archive:{archive}:busybox:latest"))
    assert info["Digest"].startswith("sha256:") and len(info["Layers"]) == 1
    with tarfile.open(archive) as handle:
        manifest = json.load(handle.extractfile("manifest.json"))
    assert manifest[0]["RepoTags"] == ["busybox:latest"]
    copy = tmp_path / "copy"
    skopeo("copy", f"docker-archive:{archive}", f"oci:{copy}:bb")
    assert (copy / "index.json").exists()


def test_oci_export_is_a_layout_skopeo_reads(imported: Path, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    assert (
        run(
            "image",
            "export",
            "busybox",
            "-o",
            f"type=oci,dest={layout},name=bb:exported",
            "--cache-dir",
            str(imported),
        )
        == 0
    )
    info = json.loads(skopeo("inspect", f"oci:{layout}:bb:exported"))
    assert info["Digest"] == manifest_digest(imported, "busybox:latest")


def test_registry_cut_mid_pull_stores_no_image(registry: RegistryServer, tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    (payload / "data").mkdir(parents=True)
    (payload / "data" / "random.bin").write_bytes(os.urandom(4 << 20))  # incompressible
    cache = tmp_path / "cache"
    assert run("image", "import", str(payload), "-t", "big:1", "--cache-dir", str(cache)) == 0
    assert run("push", "big:1", f"{registry.host}/cut/big:1", "--cache-dir", str(cache)) == 0
    proxy = CuttingProxy(registry.port, cut_after=256 * 1024)
    try:
        fresh = tmp_path / "fresh"
        code = run("pull", f"127.0.0.1:{proxy.port}/cut/big:1", "--cache-dir", str(fresh))
    finally:
        proxy.close()
    assert code == 3
    assert proxy.cuts >= 1
    index = (
        json.loads((fresh / "index.json").read_text())
        if (fresh / "index.json").exists()
        else {"manifests": []}
    )
    assert index["manifests"] == []
    assert not any((fresh / "ingest").iterdir()) if (fresh / "ingest").exists() else True
    for blob in (fresh / "blobs/sha256").iterdir() if (fresh / "blobs/sha256").exists() else ():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name  # only whole blobs


def test_pull_from_a_stopped_registry_exits_3(
    fresh_registry: RegistryServer, tmp_path: Path, capsys
) -> None:
    fresh_registry.stop()
    code = run(
        "pull",
        f"{fresh_registry.host}/nothing/here:1",
        "--registry-timeout",
        "2",
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fresh_registry.host in err[0]


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["pull", "Busybox"], 2),
        (["image", "import", "/nonexistent/rootfs", "-t", "x"], 2),
        (["image", "import", ".", "-t", "bad:tag:x"], 2),
        (["push", "not-stored:1", "127.0.0.1:1/x:1"], 2),
        (["image", "export", "not-stored", "-o", "type=oci,dest=x"], 2),
        (["image", "export", "busybox", "-o", "type=bogus,dest=x"], 2),
        (["frobnicate"], 2),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], code: int, imported: Path, capsys
) -> None:
    assert (
        run(*argv, "--cache-dir", str(imported)) == code
        if argv != ["frobnicate"]
        else run(*argv) == code
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("buildgraph: error:")


def test_push_as_docker_schema2_round_trips(
    imported: Path, registry: RegistryServer, busybox_rootfs: Path, tmp_path: Path
) -> None:
    ref = f"{registry.host}/schema2/busybox:1"
    assert run("push", "busybox", ref, "--format", "docker", "--cache-dir", str(imported)) == 0
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    assert raw["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert raw["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert raw["layers"][0]["mediaType"] == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    fresh = tmp_path / "fresh"
    assert run("pull", ref, "--cache-dir", str(fresh)) == 0
    out = tmp_path / "out"
    assert (
        run("image", "export", ref, "-o", f"type=local,dest={out}", "--cache-dir", str(fresh)) == 0
    )
    assert tree(out) == tree(busybox_rootfs)
