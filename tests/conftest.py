"""Shared fixtures: a real registry on 127.0.0.1 and a busybox root filesystem."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from registry_server import RegistryServer  # noqa: E402

BUSYBOX = shutil.which("busybox", path="/bin:/usr/bin") or "/bin/busybox"


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """An anonymous registry shared by the whole session."""
    with RegistryServer(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture
def fresh_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """A registry of the test's own, free to stop or corrupt."""
    server = RegistryServer(tmp_path / "registry").start()
    try:
        yield server
    finally:
        server.stop()


def make_busybox_rootfs(root: Path) -> Path:
    """A minimal busybox root filesystem: the static binary, applet links, passwd and group."""
    for name in ("bin", "etc", "tmp", "root", "usr/bin", "usr/sbin", "sbin", "var", "dev", "proc"):
        (root / name).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run(
        [BUSYBOX, "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        link = root / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        "app:x:1000:1000:app:/home/app:/bin/sh\n"
    )
    (root / "etc/group").write_text(
        "root:x:0:\ndaemon:x:1:\nnogroup:x:65534:\napp:x:1000:\n"
    )
    return root


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")
