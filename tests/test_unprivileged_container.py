"""buildgraph in an ordinary container: a private dockerd, `docker run` with no extra flag (no
--privileged, --cap-add or --security-opt: Docker's default capabilities and seccomp profile).
The image is a bare root with this machine's /usr and this checkout bound read-only, so the
code under test is the working tree itself (the executor image is tests/test_unprivileged.py).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dockerd import Dockerd, private_dockerd

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
SCRIPTS = REPO / "scripts"


def bare_root() -> bytes:
    """dirs and the merged-/usr links; /usr itself comes from the host, bound read-only."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, mode in (("usr", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700)):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            archive.addfile(info)
        for name in ("bin", "lib", "lib64", "sbin"):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, f"usr/{name}"
            archive.addfile(info)
        marker = tarfile.TarInfo("etc/executor-marker")
        marker.size = len(b"untouched\n")
        archive.addfile(marker, io.BytesIO(b"untouched\n"))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    work = tmp_path_factory.mktemp("dockerd")
    with private_dockerd(work) as daemon:
        (work / "bare.tar").write_bytes(bare_root())
        daemon.docker("import", str(work / "bare.tar"), "bare-host-tools:1")
        yield daemon


def in_container(docker: Dockerd, workspace: Path, script: str) -> subprocess.CompletedProcess:
    argv = [
        "run",
        "--rm",
        "--network",
        "host",
        "-v",
        "/usr:/usr:ro",
        "-v",
        f"{REPO}:{REPO}:ro",
        "-v",
        f"{workspace}:/workspace",
        "-e",
        f"PATH={VENV}/bin:/usr/bin:/bin",
        "bare-host-tools:1",
        "sh",
        "-c",
        script,
    ]
    return subprocess.run(
        ["/usr/bin/docker", *argv], env=docker.env(), capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "workspace"
    (root / "ctx").mkdir(parents=True)
    subprocess.run([str(SCRIPTS / "make-busybox-rootfs.sh"), str(root / "busybox")], check=True)
    return root


IMPORT = "buildgraph image import /workspace/busybox -t busybox --cache-dir /workspace/cache"


def test_info_and_a_forced_namespaces_isolation(docker: Dockerd, workspace: Path) -> None:
    (workspace / "ctx" / "Dockerfile").write_text("FROM busybox\nRUN true\n")
    script = (
        "buildgraph info && "
        f"{IMPORT} >/dev/null && "
        "buildgraph build /workspace/ctx --cache-dir /workspace/cache --isolation namespaces; "
        "echo exit=$?"
    )
    done = in_container(docker, workspace, script)
    assert "namespaces: unavailable: unshare: Operation not permitted" in done.stdout
    assert "isolation auto: chroot" in done.stdout
    assert "exit=2" in done.stdout
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "--isolation namespaces is not possible here" in errors[0]


def test_a_build_in_a_default_container(docker: Dockerd, workspace: Path) -> None:
    """auto picks chroot and says so in one line; the image is right; the container's own
    /etc is untouched by an image that deletes /etc; the snapshot dirs are clean after."""
    (workspace / "ctx" / "Dockerfile").write_text(
        "FROM busybox AS build\n"
        "RUN echo built > /artifact && rm -rf /etc\n"
        "FROM busybox\n"
        "WORKDIR /app\n"
        "COPY --from=build /artifact ./\n"
        "RUN --mount=type=cache,target=/c echo $(cat /app/artifact) > /app/seen\n"
    )
    script = (
        f"{IMPORT} >/dev/null && "
        "buildgraph build /workspace/ctx --cache-dir /workspace/cache --progress plain "
        "-t out:1 -o type=local,dest=/workspace/out && "
        "cat /etc/executor-marker && ls /workspace/cache/snapshots/.work | wc -l"
    )
    done = in_container(docker, workspace, script)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("isolation: chroot (namespaces are not available") == 1
    assert done.stdout.splitlines()[-2:] == ["untouched", "0"]
    assert (workspace / "out" / "app" / "seen").read_text() == "built\n"
    assert (workspace / "out" / "etc").is_dir()  # the final stage kept its /etc
