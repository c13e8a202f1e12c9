"""Remote cache end to end: machine A exports, a fresh cache dir (machine B) reuses it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cli_runs import events_in, run, started_in
from registry_server import RegistryServer
from remote_repo import make_repo

from buildgraph.cli import main

REF = "org.opencontainers.image.ref.name"


def states(out: str) -> dict[str, str]:
    return {e["instruction"]: e["state"] for e in events_in(out) if "key" in e}


def digest(root: Path, name: str) -> str:
    for entry in json.loads((root / "cache/index.json").read_text())["manifests"]:
        if entry["annotations"]["org.opencontainers.image.ref.name"] == name:
            return entry["digest"]
    raise AssertionError(name)


def test_machine_b_runs_nothing_and_gets_the_same_images(
    registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    remote = f"{registry.host}/cache/test-b"
    machine_a = make_repo(tmp_path / "a", busybox_cache, remote)
    assert run(machine_a) == 0
    assert "steps exported" in capsys.readouterr().err
    machine_b = make_repo(tmp_path / "b", busybox_cache, remote)
    assert run(machine_b) == 0
    captured = capsys.readouterr()
    seen = states(captured.out)
    assert started_in(captured.out) == []  # zero steps executed
    assert "remote" in seen.values()
    for name in ("base:1", "app:1"):
        assert digest(machine_b, name) == digest(machine_a, name)
    # B now holds the images' layers locally: a local output works.
    out = tmp_path / "rootfs"
    argv = ["image", "export", "app:1", "-o", f"type=local,dest={out}"]
    assert main([*argv, "--cache-dir", str(machine_b / "cache")]) == 0
    assert (out / "out").read_text() == "base\nv1\n"


def test_a_changed_file_on_machine_b_reuses_the_rest(
    registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    remote = f"{registry.host}/cache/test-change"
    assert run(make_repo(tmp_path / "a", busybox_cache, remote)) == 0
    capsys.readouterr()
    machine_b = make_repo(tmp_path / "b", busybox_cache, remote)
    (machine_b / "app/main.txt").write_text("v2\n")
    assert run(machine_b) == 0
    started = sorted(started_in(capsys.readouterr().out))
    assert started == [
        "[stage-0] COPY main.txt /app/",
        "[stage-0] RUN cat /base.txt /app/main.txt > /out",
    ]


def test_an_unreachable_cache_registry_warns_once_and_builds(
    fresh_registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    remote = f"{fresh_registry.host}/cache/down"
    fresh_registry.stop()
    repo = make_repo(tmp_path / "a", busybox_cache, remote)
    assert run(repo, "--registry-timeout", "1") == 0
    err = capsys.readouterr().err
    assert err.count("buildgraph: warning: remote cache") == 1
    assert run(repo, "--registry-timeout", "1", "--cache-required", "--no-cache") == 3


def test_warm_then_offline_run_needs_no_network(
    registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    remote = f"{registry.host}/cache/test-warm"
    machine_a = make_repo(tmp_path / "a", busybox_cache, remote)
    assert run(machine_a) == 0
    machine_b = make_repo(tmp_path / "b", busybox_cache, remote)
    capsys.readouterr()
    assert main(["warm", "-f", str(machine_b / "Buildfile.yaml")]) == 0
    out = capsys.readouterr().out
    assert "4 entries fetched" in out and "0 missing" in out
    assert run(machine_b, "--offline") == 0
    assert started_in(capsys.readouterr().out) == []
    assert digest(machine_b, "app:1") == digest(machine_a, "app:1")


def test_warm_build_exports_what_was_missing(
    registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    remote = f"{registry.host}/cache/test-warm-build"
    nightly = make_repo(tmp_path / "nightly", busybox_cache, remote)
    assert main(["warm", "--build", "-f", str(nightly / "Buildfile.yaml")]) == 0
    assert "4 steps exported" in capsys.readouterr().out
    laptop = make_repo(tmp_path / "laptop", busybox_cache, remote)
    assert run(laptop) == 0
    assert started_in(capsys.readouterr().out) == []


def test_build_with_cache_repo_on_two_machines(
    registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    repo = make_repo(tmp_path / "repo", busybox_cache, "unused")
    cache_repo = f"{registry.host}/cache/build"
    for machine in ("a", "b"):
        cache = tmp_path / machine
        shutil.copytree(busybox_cache, cache, symlinks=True)
        argv = ["build", str(repo / "base"), "--cache-dir", str(cache), "--cache-repo", cache_repo]
        assert main([*argv, "--progress", "plain", "-t", "base:1"]) == 0
    log = capsys.readouterr().err
    assert log.count("STARTED  [stage-0] RUN") == 1 and "REMOTE   [stage-0] RUN" in log


def test_plan_shows_remote_steps(
    registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    remote = f"{registry.host}/cache/test-plan"
    assert run(make_repo(tmp_path / "a", busybox_cache, remote)) == 0
    machine_b = make_repo(tmp_path / "b", busybox_cache, remote)
    capsys.readouterr()
    assert main(["plan", "-f", str(machine_b / "Buildfile.yaml")]) == 0
    out = capsys.readouterr().out
    assert "  remote  " in out and "  to build  " not in out
    # As `run` does: the targets' last steps hit, so nothing below them is looked up or read.
    assert out.strip().endswith("0 cached, 2 remote, 0 to build, 2 not needed")


def test_a_corrupt_blob_in_the_cache_registry_is_rebuilt_with_a_warning(
    fresh_registry: RegistryServer, busybox_cache: Path, tmp_path: Path, capsys
) -> None:
    remote = f"{fresh_registry.host}/cache/corrupt"
    machine_a = make_repo(tmp_path / "a", busybox_cache, remote)
    assert run(machine_a) == 0
    index = json.loads((machine_a / "cache/index.json").read_text())
    app = next(e for e in index["manifests"] if e["annotations"][REF] == "app:1")
    blobs = machine_a / "cache/blobs/sha256"
    manifest = json.loads((blobs / app["digest"].removeprefix("sha256:")).read_text())
    top = manifest["layers"][-1]["digest"].removeprefix("sha256:")
    stored = fresh_registry.storage / "docker/registry/v2/blobs/sha256" / top[:2] / top / "data"
    stored.write_bytes(b"not the layer you are looking for")
    capsys.readouterr()
    machine_b = make_repo(tmp_path / "b", busybox_cache, remote)
    assert run(machine_b) == 0
    captured = capsys.readouterr()
    assert "is unusable" in captured.err
    assert "[stage-0] RUN cat /base.txt /app/main.txt > /out" in started_in(captured.out)
    out = tmp_path / "rootfs"
    argv = ["image", "export", "app:1", "-o", f"type=local,dest={out}"]
    assert main([*argv, "--cache-dir", str(machine_b / "cache")]) == 0
    assert (out / "out").read_text() == "base\nv1\n"
