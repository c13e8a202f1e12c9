"""The chroot isolation (unprivileged containers) builds what the namespaces isolation builds:
on every conformance case, the same root filesystem and the same config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conformance.cases import Case, load_cases
from conformance.compare import config_fields, diff_configs, diff_trees, rootfs_tree
from conformance.oci import image_config, unpack
from conformance.test_conformance import TAG, build_with_buildgraph

# (case, path) that differ, and why: what the chroot isolation cannot give.
EXPECTED_DIFFERENCES = {
    ("run-mount-bind-from-stage", "/ro-check"): "a read-only bind mount is a copy there, and "
    "root in RUN can write a copy: the case's write into the mount succeeds",
}
# Cases the chroot isolation cannot build, and why (each is checked to fail there).
CHROOT_CANNOT = {
    "run-mount-vars": "its RUN reads /proc/mounts to see a tmpfs mount: the chroot isolation "
    "mounts nothing and has no /proc",
}


@pytest.mark.slow
@pytest.mark.parametrize("case", load_cases(), ids=lambda case: case.name)
def test_chroot_builds_what_namespaces_build(
    case: Case, engine_cache: Path, tmp_path: Path
) -> None:
    if case.name in CHROOT_CANNOT:
        out = tmp_path / "chroot"
        cache = out / "cache"
        _copy_store(engine_cache, cache)
        with pytest.raises(AssertionError, match="could not build"):
            build_with_buildgraph(case, cache, out, "--no-cache", "--isolation", "chroot")
        pytest.xfail(CHROOT_CANNOT[case.name])
    results = {}
    for isolation in ("namespaces", "chroot"):
        out = tmp_path / isolation
        cache = out / "cache"  # a store each: RUN --mount=type=cache dirs start alike
        _copy_store(engine_cache, cache)
        layout = build_with_buildgraph(case, cache, out, "--no-cache", "--isolation", isolation)
        tree = rootfs_tree(unpack(layout, TAG, out / "rootfs"))
        results[isolation] = (tree, config_fields(image_config(layout, TAG)))
    (ours_tree, ours_config), (chroot_tree, chroot_config) = results.values()
    names = ("namespaces", "chroot")
    problems = diff_trees(ours_tree, chroot_tree, names) + diff_configs(
        ours_config, chroot_config, names
    )
    problems = [p for p in problems if (case.name, p.split(":", 1)[0]) not in EXPECTED_DIFFERENCES]
    assert problems == [], "\n".join(problems)


def _copy_store(source: Path, target: Path) -> None:
    """`cp -a`: the unpacked snapshots must keep their owners (shutil.copytree drops them)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
