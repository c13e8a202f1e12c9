"""The peer: build a case with buildah (vfs, chroot) and read back its rootfs and config."""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conformance import oci
from conformance.compare import EMPTY_SHA256, Entry, rootfs_tree

BASE_NAMES = ("busybox", "docker.io/library/busybox:latest")
# --pull-never: never ask a registry. --layers: one layer per instruction, like Docker.
# The last three flags only stop buildah from adding things of its own that Docker does not:
# the io.buildah.version label and empty /etc/resolv.conf and /etc/hosts mount points.
BUILD_FLAGS = (
    "--isolation=chroot",
    "--format=docker",
    "--layers",
    "--pull-never",
    "--identity-label=false",
    "--dns=none",
    "--no-hosts",
)
# Mount points buildah 1.28 leaves behind after any RUN and has no flag for: an empty 0755
# /etc/hostname and an empty /run. Docker leaves neither, so they are dropped from buildah's
# tree when (and only when) they look exactly like that.
RUN_ARTIFACTS: dict[str, Entry] = {
    "/etc/hostname": ("file", 0o755, 0, 0, EMPTY_SHA256, "", ""),
    "/run": ("dir", 0o755, 0, 0, "", "", ""),
}


class PeerBuildError(Exception):
    pass


@dataclass(frozen=True)
class PeerImage:
    name: str  # the image name in the buildah store
    layout: Path  # an OCI layout holding the image as tag "img"
    rootfs: Path  # the layout unpacked by umoci
    config: dict[str, Any]  # the config document exactly as buildah stored it (docker schema2)
    tree: dict[str, Entry]  # rootfs_tree(rootfs) without buildah's RUN_ARTIFACTS


def buildah_build(
    case_dir: Path,
    *,
    busybox_oci: Path,
    workdir: Path,
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
) -> PeerImage:
    """Build case_dir/Dockerfile with case_dir as context; workdir holds the buildah store.

    The busybox base is imported into the store on first use only, so share workdir.
    """
    import_base(busybox_oci, workdir)
    out = Path(tempfile.mkdtemp(prefix=f"{case_dir.name}-", dir=_mkdir(workdir / "out")))
    name = "localhost/conformance/" + re.sub(r"[^a-z0-9]+", "-", out.name.lower()).strip("-")
    argv = ["bud", *BUILD_FLAGS, "-f", str(case_dir / "Dockerfile"), "-t", name]
    for key, value in (build_args or {}).items():
        argv += ["--build-arg", f"{key}={value}"]
    if target:
        argv += ["--target", target]
    _buildah(workdir, *argv, str(case_dir))
    _buildah(workdir, "push", "--quiet", name, f"oci:{out / 'layout'}:img")
    # Pushing to an OCI layout drops Healthcheck, OnBuild and Shell (OCI configs have no such
    # fields), so the config comes from the store, where it is the docker config blob itself.
    inspected = json.loads(_buildah(workdir, "inspect", "--type", "image", name))
    rootfs = oci.unpack(out / "layout", "img", out / "rootfs")
    return PeerImage(
        name=name,
        layout=out / "layout",
        rootfs=rootfs,
        config=json.loads(inspected["Config"]),
        tree=drop_run_artifacts(rootfs_tree(rootfs)),
    )


def drop_run_artifacts(tree: dict[str, Entry]) -> dict[str, Entry]:
    has_children = {path.rsplit("/", 1)[0] or "/" for path in tree}
    return {
        path: entry
        for path, entry in tree.items()
        if not (RUN_ARTIFACTS.get(path) == entry and path not in has_children)
    }


def import_base(busybox_oci: Path, workdir: Path) -> None:
    """Put the busybox layout into workdir's store under BASE_NAMES, once per store."""
    digest = hashlib.sha256((busybox_oci / "index.json").read_bytes()).hexdigest()
    marker = _mkdir(workdir) / "busybox.imported"
    with open(workdir / "store.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == digest:
            return
        image_id = _buildah(workdir, "pull", "--quiet", f"oci:{busybox_oci}:busybox").strip()
        _buildah(workdir, "tag", image_id.splitlines()[-1], *BASE_NAMES)
        marker.write_text(digest)


# buildah 1.28's chroot isolation copies its own binary into a sealed memfd for each RUN, and
# that now and then fails with EBUSY under load: a flake of the peer, not a build failure.
PEER_FLAKES = ("sealing memfd copy: Device or resource busy",)
PEER_ATTEMPTS = 3


def _buildah(workdir: Path, *argv: str) -> str:
    store = ["--storage-driver=vfs", f"--root={workdir / 'root'}"]
    command = ["buildah", *store, f"--runroot={workdir / 'runroot'}", *argv]
    for attempt in range(1, PEER_ATTEMPTS + 1):
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if done.returncode == 0:
            return done.stdout
        output = (done.stdout + done.stderr)[-4000:]
        if attempt == PEER_ATTEMPTS or not any(flake in output for flake in PEER_FLAKES):
            raise PeerBuildError(f"{' '.join(command)} exited {done.returncode}:\n{output}")
    raise AssertionError("unreachable")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
