"""The engine against buildah: every case's root filesystem and config must be equal."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildgraph.cli import main
from conformance.cases import Case, load_cases
from conformance.compare import case_differences, check_expectations, config_fields, rootfs_tree
from conformance.oci import image_config, unpack

TAG = "case"


def build_with_buildgraph(case: Case, cache: Path, out: Path, *extra: str) -> Path:
    layout = out / "layout"
    argv = [
        "build",
        str(case.path),
        "--cache-dir",
        str(cache),
        "--progress",
        "plain",
        "-q",
        "-o",
        f"type=oci,dest={layout},name={TAG}",
        *extra,
    ]
    for key, value in sorted(case.build_args.items()):
        argv += ["--build-arg", f"{key}={value}"]
    if case.target:
        argv += ["--target", case.target]
    assert main(argv) == 0, f"buildgraph could not build {case.name}"
    return layout


@pytest.mark.slow
@pytest.mark.parametrize("case", load_cases(), ids=lambda case: case.name)
def test_engine_matches_buildah(case: Case, buildah_peer, engine_cache: Path, tmp_path: Path):
    layout = build_with_buildgraph(case, engine_cache, tmp_path)
    tree = rootfs_tree(unpack(layout, TAG, tmp_path / "rootfs"))
    ours = (tree, config_fields(image_config(layout, TAG)))
    if case.xfail_reason:  # the peer cannot build it: pinned facts only
        assert check_expectations(*ours, case.expect) == []
        return
    peer = buildah_peer.build(case)
    problems = case_differences(
        ours,
        (peer.tree, config_fields(peer.config)),
        peer_differs=case.peer_differs,
        expect=case.expect,
    )
    assert problems == [], "\n".join(problems)
