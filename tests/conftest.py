"""Shared fixtures: a real registry on 127.0.0.1 and a busybox root filesystem."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_server import RegistryServer

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """An anonymous registry shared by the whole session."""
    with RegistryServer(tmp_path_factory.mktemp("registry")) as server:
        yield server


@pytest.fixture
def logged_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """A registry of the test's own that logs every request (`RegistryServer.requests`)."""
    with RegistryServer(tmp_path / "registry", access_log=True) as server:
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
    """A minimal busybox root filesystem, made by the same script the Quick start uses."""
    subprocess.run([str(SCRIPTS / "make-busybox-rootfs.sh"), str(root)], check=True)
    return root


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture(scope="session")
def busybox_cache(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path) -> Path:
    """A store holding only busybox:latest (unpacked); tests copy it, never write to it."""
    from buildgraph.cli import main

    cache = tmp_path_factory.mktemp("store") / "cache"
    argv = ["image", "import", str(busybox_rootfs), "-t", "busybox", "--cache-dir", str(cache)]
    assert main(argv) == 0
    return cache
