"""Session fixtures: the busybox base as an OCI layout and one buildah store for all cases."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from buildgraph.cli import main
from conformance.cases import Case
from conformance.oci import make_busybox_oci
from conformance.peer import PeerImage, buildah_build


class BuildahPeer:
    """Builds cases with buildah in one store; each (case, args, target) is built once."""

    def __init__(self, busybox_oci: Path, workdir: Path) -> None:
        self.busybox_oci = busybox_oci
        self.workdir = workdir
        self._built: dict[tuple[Path, tuple[tuple[str, str], ...], str | None], PeerImage] = {}

    def build(self, case: Case) -> PeerImage:
        key = (case.path, tuple(sorted(case.build_args.items())), case.target)
        if key not in self._built:
            self._built[key] = buildah_build(
                case.path,
                busybox_oci=self.busybox_oci,
                workdir=self.workdir,
                build_args=case.build_args,
                target=case.target,
            )
        return self._built[key]


@pytest.fixture(scope="session")
def busybox_oci(busybox_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("umoci"):
        pytest.skip("umoci is not installed")
    return make_busybox_oci(busybox_rootfs, tmp_path_factory.mktemp("busybox-oci") / "layout")


@pytest.fixture(scope="session")
def buildah_peer(busybox_oci: Path, tmp_path_factory: pytest.TempPathFactory) -> BuildahPeer:
    if not shutil.which("buildah"):
        pytest.skip("buildah is not installed (apt-get install buildah)")
    return BuildahPeer(busybox_oci, tmp_path_factory.mktemp("buildah"))


@pytest.fixture(scope="session")
def engine_cache(busybox_rootfs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the whole corpus, holding the same busybox rootfs the peer starts from."""
    cache = tmp_path_factory.mktemp("engine") / "cache"
    argv = ["image", "import", str(busybox_rootfs), "-t", "busybox", "--cache-dir", str(cache)]
    assert main(argv) == 0
    return cache
