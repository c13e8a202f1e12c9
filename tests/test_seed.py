"""The seed scenario for real (slow): debootstrap bookworm, import it, build workspace/."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from buildgraph.cli import main

REPO = Path(__file__).resolve().parent.parent


def debian_mirror(apt_dir: Path | None = None) -> str:
    """The bookworm mirror of this machine's apt sources (scripts/debian-mirror.sh)."""
    env = {**os.environ, "APT_DIR": str(apt_dir)} if apt_dir else None
    done = subprocess.run(
        [str(REPO / "scripts/debian-mirror.sh"), "bookworm"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow
def test_workspace_dockerfile_installs_wget_and_curl(tmp_path: Path) -> None:
    rootfs, cache = tmp_path / "rootfs", tmp_path / "cache"
    mirror = os.environ.get("DEBIAN_MIRROR") or debian_mirror()
    subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), mirror],
        check=True,
        capture_output=True,
        timeout=1200,
    )
    assert (
        main(["image", "import", str(rootfs), "-t", "debian:bookworm", "--cache-dir", str(cache)])
        == 0
    )
    argv = ["build", str(REPO / "workspace"), "-t", "workspace:latest", "--cache-dir", str(cache)]
    assert main([*argv, "--progress", "plain", "-q"]) == 0
    info = json.loads(
        subprocess.run(
            ["skopeo", "inspect", f"oci:{cache}:workspace:latest"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    top = cache / "blobs/sha256" / info["Layers"][-1].removeprefix("sha256:")
    with tarfile.open(top) as layer:
        names = set(layer.getnames())
    assert {"usr/bin/wget", "usr/bin/curl"} <= names
    assert main([*argv, "--progress", "plain"]) == 0  # fully cached the second time
