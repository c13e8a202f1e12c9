"""A target found in the remote cache and pushed: its layers are mounted in the registry from the
cache repository, never downloaded, when the push goes to the cache's registry."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_runs import write_repo
from conformance.compare import rootfs_tree
from registry_server import RegistryServer

from buildgraph.cache.local import LocalStore
from buildgraph.cli import main
from buildgraph.commands.image import build_timestamp
from buildgraph.commands.run import RunResult, run_project
from buildgraph.frontend.buildfile import load_project
from buildgraph.image import mediatypes as mt
from buildgraph.registry.client import RegistryClient
from buildgraph.registry.reference import parse_reference
from buildgraph.solver.events import CollectingSink
from buildgraph.ui.summary import summary_table

BUILDFILE = """version: 1
cache: {{dir: cache}}
targets:
  x:
    context: x
    tags: ["{tag}"]
    outputs: {outputs}
"""
DOCKERFILE = "FROM busybox\nRUN mkdir -p /srv && echo {name} > /srv/name && ln -s name /srv/link\n"


def make_repo(root: Path, busybox_cache: Path, name: str, tag: str, outputs: str = "[]") -> Path:
    files = {
        "Buildfile.yaml": BUILDFILE.format(tag=tag, outputs=outputs),
        "x/Dockerfile": DOCKERFILE.format(name=name),
    }
    return write_repo(root, files, busybox_cache)  # the cache holds only the base image


def build_on_a(root: Path, cache_to: str) -> None:
    """Machine A: a cold build that exports every step to the remote cache."""
    argv = ["run", "-f", str(root / "Buildfile.yaml"), "--progress", "plain"]
    assert main([*argv, "--cache-to", cache_to]) == 0


def run_on_b(
    root: Path, cache_from: str | None, warnings: list[str], *, push: bool = True
) -> RunResult:
    """Machine B: the same target, from the remote cache, pushed (`run --push`)."""
    with RegistryClient() as client:
        return run_project(
            load_project(root / "Buildfile.yaml"),
            [],
            store=LocalStore(root / "cache"),
            client=lambda: client,
            sink=CollectingSink(),
            jobs=2,
            epoch=build_timestamp()[1],
            push_all=push,
            cache_from=cache_from,
            warn=warnings.append,
        )


def skopeo_inspect(ref: str, *options: str) -> dict:
    argv = ["skopeo", "inspect", "--tls-verify=false", *options, f"docker://{ref}"]
    return json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)


def unpack_from_registry(ref: str, work: Path) -> Path:
    """The image's root filesystem as skopeo copies it and umoci unpacks it."""
    work.mkdir()
    layout = work / "layout"
    copy = ["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:img"]
    subprocess.run(copy, check=True, capture_output=True)
    bundle = work / "bundle"
    unpack = ["umoci", "unpack", "--image", f"{layout}:img", str(bundle)]
    subprocess.run(unpack, check=True, capture_output=True)
    return bundle / "rootfs"


def test_a_cached_image_is_pushed_with_its_layers_mounted_from_the_cache(
    registry: RegistryServer, busybox_cache: Path, tmp_path: Path
) -> None:
    host = registry.host
    cache, tag = f"{host}/cache/mount", f"{host}/app/mount:1"
    machine_a = make_repo(tmp_path / "a", busybox_cache, "mount", tag)
    build_on_a(machine_a, cache)
    # A's image as a push from where its layers were built puts it (compressed).
    pushed_by_a = f"{host}/app/mount-a:1"
    argv = ["push", parse_reference(tag).familiar, pushed_by_a]
    assert main([*argv, "--cache-dir", str(machine_a / "cache")]) == 0

    machine_b = make_repo(tmp_path / "b", busybox_cache, "mount", tag)
    warnings: list[str] = []
    result = run_on_b(machine_b, cache, warnings)

    assert warnings == []
    assert result.outcome.failures == {}
    assert result.downloaded == 0
    (target,) = result.targets
    assert target.built == 0
    assert target.tags == (tag,)  # the pushed reference; no local tag
    assert target.note.startswith("pushed without downloading: 1 layer mounted from ")
    assert target.note.endswith(f"{cache}; not tagged locally")
    assert f"x: {target.note}" in summary_table(result)
    store = LocalStore(machine_b / "cache")
    assert store.resolve(tag) is None and store.resolve(parse_reference(tag).familiar) is None

    manifest = skopeo_inspect(tag, "--raw")
    config = skopeo_inspect(tag, "--config")
    config_a = skopeo_inspect(pushed_by_a, "--config")
    assert config["rootfs"]["diff_ids"] == config_a["rootfs"]["diff_ids"]
    assert manifest["config"]["digest"] == skopeo_inspect(pushed_by_a, "--raw")["config"]["digest"]
    assert target.image is not None and manifest["config"] == {
        "mediaType": mt.OCI_CONFIG,
        "digest": store.read_manifest(target.image).config.digest,
        "size": store.read_manifest(target.image).config.size,
    }
    # The RUN layer is the cache entry's blob, as the cache holds it (uncompressed), and B never
    # had its bytes: the registry mounted it.
    with RegistryClient() as client:
        entry = client.get_manifest(parse_reference(cache, default_tag=None).with_tag(target.key))
    cached_layers = json.loads(entry.data)["layers"]
    top = manifest["layers"][-1]
    assert top == cached_layers[-1] and top["mediaType"] == mt.OCI_LAYER
    assert not store.has_blob(top["digest"])
    assert [layer["digest"] for layer in manifest["layers"][:-1]] == [
        layer["digest"] for layer in skopeo_inspect(pushed_by_a, "--raw")["layers"][:-1]
    ]  # the base layer, which B has, went as it goes from A

    assert rootfs_tree(unpack_from_registry(tag, tmp_path / "b-image")) == rootfs_tree(
        unpack_from_registry(pushed_by_a, tmp_path / "a-image")
    )

    again = run_on_b(machine_b, cache, warnings)  # all local records now; still nothing fetched
    assert again.downloaded == 0 and again.targets[0].image == target.image
    assert skopeo_inspect(tag, "--raw") == manifest
    # Without the remote cache the layers cannot be had: the step is built here again (never
    # a tag of missing blobs), and the image is tagged locally.
    offline = run_on_b(machine_b, None, warnings, push=False)
    assert offline.outcome.failures == {}
    assert offline.targets[0].built == 2  # the RUN, and the FROM under it it now needs
    assert store.resolve(parse_reference(tag).familiar) is not None


@pytest.mark.parametrize("case", ["push to another registry", "local output too"])
def test_a_push_that_needs_the_files_here_downloads_them(
    registry: RegistryServer,
    fresh_registry: RegistryServer,
    busybox_cache: Path,
    tmp_path: Path,
    case: str,
) -> None:
    name = "other" if case == "push to another registry" else "output"
    cache = f"{registry.host}/cache/{name}"
    pushed = fresh_registry if case == "push to another registry" else registry
    tag = f"{pushed.host}/app/{name}:1"
    out = tmp_path / "out"
    outputs = f'["type=oci,dest={out}"]' if case == "local output too" else "[]"
    build_on_a(make_repo(tmp_path / "a", busybox_cache, name, tag, outputs), cache)
    shutil.rmtree(out, ignore_errors=True)

    machine_b = make_repo(tmp_path / "b", busybox_cache, name, tag, outputs)
    warnings: list[str] = []
    result = run_on_b(machine_b, cache, warnings)

    assert warnings == [] and result.outcome.failures == {}
    (target,) = result.targets
    assert target.note == "" and target.tags == (parse_reference(tag).familiar,)
    store = LocalStore(machine_b / "cache")
    assert target.image is not None
    layers = store.read_manifest(target.image).layers
    assert result.downloaded == layers[-1].size > 0  # the RUN layer, once
    assert all(store.has_blob(layer.digest) for layer in layers)
    assert store.resolve(parse_reference(tag).familiar) is not None
    manifest = skopeo_inspect(tag, "--raw")
    assert all(mt.compression_of(layer["mediaType"]) == "gzip" for layer in manifest["layers"])
    if case == "local output too":
        assert (out / "index.json").is_file()


def test_plan_says_when_a_target_needs_no_files_here(
    registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    """As `run` decides: a target only pushed to the cache's registry is pushed by mounting
    its layers, so `plan --push` says its files need not come here; tagged here, they must."""
    host = registry.host
    cache, tag = f"{host}/cache/plan-files", f"{host}/app/plan-files:1"
    build_on_a(make_repo(tmp_path / "a", busybox_cache, "plan-files", tag), cache)
    machine_b = make_repo(tmp_path / "b", busybox_cache, "plan-files", tag)
    argv = ["plan", "-f", str(machine_b / "Buildfile.yaml"), "--cache-from", cache]
    capsys.readouterr()
    assert main(argv) == 0
    assert "files not needed here" not in capsys.readouterr().out
    assert main([*argv, "--push"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == [
        "x:",
        "  (files not needed here: the push mounts its layers from the cache)",
    ]
    assert lines[-1].endswith("1 remote, 0 to build, 1 not needed")
