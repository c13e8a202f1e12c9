"""The peer harness works: buildah builds every case, and the comparison would catch changes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conformance.cases import Case, load_cases
from conformance.compare import (
    case_differences,
    check_expectations,
    config_fields,
    diff_configs,
    diff_trees,
    rootfs_tree,
)
from conformance.conftest import BuildahPeer
from conformance.peer import RUN_ARTIFACTS, buildah_build, drop_run_artifacts

CASES = load_cases()
BY_NAME = {case.name: case for case in CASES}
FROM = re.compile(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", re.I | re.M)


def _param(case: Case) -> object:
    marks = [pytest.mark.slow]
    if case.xfail_reason:
        marks.append(pytest.mark.xfail(reason=case.xfail_reason, strict=True))
    return pytest.param(case, id=case.name, marks=marks)


def test_corpus_has_enough_cases_and_only_local_bases() -> None:
    assert len(CASES) >= 45
    for case in CASES:
        text = (case.path / "Dockerfile").read_text()
        stages = [name.lower() for _, name in FROM.findall(text) if name]
        for base, _ in FROM.findall(text):
            allowed = base in ("busybox", "scratch") or "$" in base or base.isdigit()
            assert allowed or base.lower() in stages, f"{case.name}: FROM {base}"


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_buildah_builds_case(buildah_peer: BuildahPeer, case: Case) -> None:
    image = buildah_peer.build(case)
    config = config_fields(image.config)
    assert image.tree["/"][0] == "dir"
    assert config["Env"], "buildah always records PATH"
    problems = check_expectations(image.tree, config, case.expect)
    differs = [p for p in problems if any(field in p for field in case.peer_differs)]
    assert problems == differs, "\n".join(problems)
    for field in case.peer_differs:  # the recorded difference must still be real
        assert any(field in problem for problem in differs), f"buildah now agrees on {field}"


@pytest.mark.slow
def test_peer_builds_are_reproducible(buildah_peer: BuildahPeer, tmp_path: Path) -> None:
    """Two builds of the same case compare equal: nothing random leaks into tree or config."""
    case = BY_NAME["fs-special-bits"]
    first = buildah_peer.build(case)
    again = buildah_build(
        case.path, busybox_oci=buildah_peer.busybox_oci, workdir=buildah_peer.workdir
    )
    assert first.rootfs != again.rootfs
    assert diff_trees(first.tree, again.tree) == []
    assert diff_configs(config_fields(first.config), config_fields(again.config)) == []


@pytest.mark.slow
def test_comparison_catches_a_changed_mode(buildah_peer: BuildahPeer) -> None:
    tree = buildah_peer.build(BY_NAME["copy-chmod"]).tree
    assert tree["/setuid"][1] == 0o4755
    changed = dict(tree)
    changed["/setuid"] = (tree["/setuid"][0], 0o755, *tree["/setuid"][2:])
    assert diff_trees(tree, changed, ("buildah", "engine")) == [
        "/setuid: mode 4755 != 0755 (buildah != engine)"
    ]


@pytest.mark.slow
def test_whiteout_and_onbuild_results_are_real(buildah_peer: BuildahPeer) -> None:
    whiteout = buildah_peer.build(BY_NAME["fs-whiteout"])
    assert "/etc/group" not in whiteout.tree
    assert not (whiteout.rootfs / "etc/group").exists()
    assert not list(whiteout.rootfs.rglob(".wh.*")), "umoci must apply whiteouts"
    triggered = buildah_peer.build(BY_NAME["onbuild-triggers"])
    assert (triggered.rootfs / "seen-by-child").read_text() == "triggered\n"
    assert config_fields(triggered.config)["OnBuild"] == []


def test_rootfs_tree_records_what_the_acceptance_compares(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "file").write_text("x")
    os.chmod(root / "dir" / "file", 0o4751)
    os.link(root / "dir" / "file", root / "hard")
    os.symlink("dir/file", root / "link")
    os.mkfifo(root / "fifo")
    tree = rootfs_tree(root)
    assert sorted(tree) == ["/", "/dir", "/dir/file", "/fifo", "/hard", "/link"]
    kind, mode, uid, _, content, link, group = tree["/dir/file"]
    assert (kind, mode, uid, link, group) == ("file", 0o4751, os.getuid(), "", "/dir/file")
    assert content == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    assert tree["/hard"][6] == "/dir/file"
    assert tree["/link"][0::5] == ("symlink", "dir/file")
    assert tree["/fifo"][0] == "fifo"
    os.utime(root / "dir" / "file", (0, 0))  # mtimes never matter
    assert diff_trees(tree, rootfs_tree(root)) == []


def test_diff_trees_names_each_difference() -> None:
    a = {"/x": ("file", 0o644, 0, 0, "1" * 64, "", "")}
    a["/gone"] = ("dir", 0o755, 0, 0, "", "", "")
    b = {"/x": ("file", 0o644, 1000, 0, "2" * 64, "", "")}
    b["/new"] = ("symlink", 0o777, 0, 0, "", "/x", "")
    assert diff_trees(a, b, ("buildah", "engine")) == [
        "/gone: only in buildah type=dir mode=0755 uid=0 gid=0",
        "/new: only in engine type=symlink mode=0777 uid=0 gid=0 link='/x'",
        "/x: uid 0 != 1000, content 111111111111 != 222222222222 (buildah != engine)",
    ]


def test_config_fields_treats_missing_and_empty_alike() -> None:
    buildah_like = {
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": [],
            "Entrypoint": [],
            "Labels": {},
            "Volumes": {},
            "OnBuild": [],
            "Hostname": "random",
            "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 90_000_000_000},
        }
    }
    written_elsewhere = {
        "Env": ["PATH=/bin"],
        "Entrypoint": None,
        "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": "1m30s", "Retries": 0},
    }
    assert config_fields(buildah_like) == config_fields(written_elsewhere)
    assert config_fields(written_elsewhere)["Healthcheck"]["Interval"] == 90_000_000_000
    assert diff_configs(config_fields({"User": "app"}), config_fields({}), ("x", "y")) == [
        "User: 'app' (x) != '' (y)"
    ]


def test_run_artifacts_are_dropped_only_when_untouched() -> None:
    tree = {"/": ("dir", 0o755, 0, 0, "", "", ""), **RUN_ARTIFACTS}
    assert drop_run_artifacts(tree) == {"/": tree["/"]}
    used = {**tree, "/run/app.pid": ("file", 0o644, 0, 0, "1" * 64, "", "")}
    used["/etc/hostname"] = ("file", 0o644, 0, 0, "1" * 64, "", "")
    assert drop_run_artifacts(used) == used


def test_case_differences_skip_what_the_peer_gets_wrong_but_check_expectations() -> None:
    peer_tree = {"/": ("dir", 0o755, 0, 0, "", "", "")}
    ours_tree = {**peer_tree, "/wd": ("dir", 0o755, 0, 0, "", "", "")}
    peer_config = config_fields({"Cmd": ["/bin/sh", "-c", "x"]})
    ours_config = config_fields({"Cmd": ["/bin/ash", "-c", "x"]})
    expect = {"paths": {"/wd": {"type": "dir"}}, "config": {"Cmd": ["/bin/ash", "-c", "x"]}}
    differs = {"/wd": "not created by buildah", "Cmd": "SHELL ignored by buildah"}
    ours, peer = (ours_tree, ours_config), (peer_tree, peer_config)
    assert case_differences(ours, peer, peer_differs=differs, expect=expect) == []
    assert case_differences(ours, peer, peer_differs={}, expect={}) == [
        "/wd: only in ours type=dir mode=0755 uid=0 gid=0",
        "Cmd: ['/bin/ash', '-c', 'x'] (ours) != ['/bin/sh', '-c', 'x'] (peer)",
    ]
    wrong = {**expect, "config": {"Cmd": ["/bin/sh", "-c", "x"]}}
    assert case_differences(ours, peer, peer_differs=differs, expect=wrong) != []
