"""`warm --build` leaves the remote cache complete: steps the local store already held (built
offline, or while the registry was down, or read from another repository) are exported too,
where the export repository lacks them. A plain `run` exports only what it built."""

from __future__ import annotations

from pathlib import Path

import requests
from cli_runs import graph_nodes, run, started_in
from registry_server import RegistryServer
from remote_repo import make_repo

from buildgraph.cli import main


def warm_build(root: Path, *argv: str) -> int:
    return main(["warm", "--build", "-f", str(root / "Buildfile.yaml"), *argv])


def tags(registry: RegistryServer, repository: str) -> list[str]:
    response = requests.get(f"http://{registry.host}/v2/{repository}/tags/list", timeout=10)
    if response.status_code == 404:  # no such repository yet
        return []
    response.raise_for_status()
    return sorted(response.json()["tags"] or [])


def all_keys(root: Path, capsys) -> list[str]:
    return sorted(node["key"] for node in graph_nodes(root, capsys))


def test_warm_build_exports_the_steps_built_offline(
    logged_registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    remote = f"{logged_registry.host}/cache/offline"
    laptop = make_repo(tmp_path / "laptop", busybox_cache, remote)
    assert run(laptop, "--offline") == 0
    assert run(laptop) == 0  # every step local: a run exports nothing (what it did not build)
    assert tags(logged_registry, "cache/offline") == []
    capsys.readouterr()

    assert warm_build(laptop) == 0
    assert "4 steps exported" in capsys.readouterr().out
    assert tags(logged_registry, "cache/offline") == all_keys(laptop, capsys)

    # Nothing is missing now: one manifest GET per step, nothing uploaded.
    before = len(logged_registry.requests())
    assert warm_build(laptop) == 0
    assert "steps exported" not in capsys.readouterr().out  # the line names none
    asked = logged_registry.requests()[before:]
    assert not [request for request in asked if request[0] in ("POST", "PUT", "PATCH")]

    fresh = make_repo(tmp_path / "fresh", busybox_cache, remote)
    assert run(fresh) == 0
    assert started_in(capsys.readouterr().out) == []  # all of it came from the cache


def test_warm_build_copies_entries_read_from_another_repository_by_mounting(
    logged_registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    main_cache = f"{logged_registry.host}/cache/main"
    assert run(make_repo(tmp_path / "a", busybox_cache, main_cache)) == 0
    branch = make_repo(tmp_path / "branch", busybox_cache, main_cache)
    capsys.readouterr()
    before = len(logged_registry.requests())
    branch_cache = f"{logged_registry.host}/cache/branch"
    assert warm_build(branch, "--cache-from", main_cache, "--cache-to", branch_cache) == 0
    assert "4 steps exported" in capsys.readouterr().out
    assert tags(logged_registry, "cache/branch") == tags(logged_registry, "cache/main")
    uploads = [
        path
        for method, path in logged_registry.requests()[before:]
        if method == "POST" and path.startswith("/v2/cache/branch/blobs/uploads/")
    ]
    # Every layer came across by a mount; only the configs were uploaded (plus the empty-blob
    # mount that checks push access).
    assert sum("mount=" in path for path in uploads) >= 3
    assert sum("mount=" not in path for path in uploads) == 4


def test_warm_build_in_mode_min_exports_only_the_targets_images(
    registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    remote = f"{registry.host}/cache/offline-min"
    laptop = make_repo(tmp_path / "laptop", busybox_cache, remote)
    buildfile = laptop / "Buildfile.yaml"
    buildfile.write_text(buildfile.read_text().replace("remote:", "mode: min, remote:"))
    assert run(laptop, "--offline") == 0
    capsys.readouterr()
    assert warm_build(laptop) == 0
    # base's RUN and app's COPY and RUN: the steps that add the images' layers
    assert "3 steps exported" in capsys.readouterr().out
    assert len(tags(registry, "cache/offline-min")) == 3


def test_warm_build_with_the_export_registry_down_warns_once(
    registry: RegistryServer,
    fresh_registry: RegistryServer,
    busybox_cache: Path,
    tmp_path: Path,
    capsys,
) -> None:
    laptop = make_repo(tmp_path / "laptop", busybox_cache, f"{registry.host}/cache/up")
    assert run(laptop, "--offline") == 0
    down = f"{fresh_registry.host}/cache/down"
    fresh_registry.stop()
    capsys.readouterr()
    argv = ("--cache-to", down, "--registry-timeout", "1")
    assert warm_build(laptop, *argv) == 0
    err = capsys.readouterr().err
    assert err.count("warning: remote cache") == 1, err
    assert "export failed" in err
    assert warm_build(laptop, *argv, "--cache-required") == 3
