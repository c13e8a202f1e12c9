"""Run the peer engines privately: BuildKit inside a hand-started dockerd, and buildah.

Each peer is a context manager that starts from nothing under a work directory of its own, with
busybox already in its store, and undoes everything (daemon, mounts, files) in `finally`. Only
unix sockets are used; no build reaches a network.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from workloads import Workload

DOCKER = "/usr/bin/docker"  # Debian's client; /usr/local/bin/docker lacks buildx and refuses
DOCKERD = "/usr/sbin/dockerd"
BUILDAH = "/usr/bin/buildah"
BUILD_TIMEOUT = 1800.0  # seconds; a build slower than this is broken, not slow


class PeerError(Exception):
    """A peer could not start, or one of its commands failed."""


def buildgraph_command() -> list[str]:
    """The console script itself, not a version-manager shim that adds its own start-up."""
    script = Path(sys.executable).parent / "buildgraph"
    return [str(script)] if script.exists() else [sys.executable, "-m", "buildgraph"]


@contextlib.contextmanager
def work_dir(prefix: str, *, keep: bool) -> Iterator[Path]:
    """A temporary work dir for one benchmark, removed afterwards unless `keep`. Byte-code is
    cached there as an installed wheel's would be: under PYTHONDONTWRITEBYTECODE=1 every
    buildgraph command would recompile ~110 modules (~0.1 s)."""
    # Not mkdtemp: buildah names an image pulled from an OCI layout after the layout's path, and
    # a random "_" next to "-" or "/" makes that an invalid reference.
    work = Path(tempfile.gettempdir()) / f"{prefix}{secrets.token_hex(4)}"
    work.mkdir(mode=0o700)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    try:
        yield work
    finally:
        if keep:
            note(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    timeout: float = BUILD_TIMEOUT,
) -> None:
    """Run ARGV to completion; its output goes to LOG (or is dropped); raise on failure."""
    with open(log or os.devnull, "ab") as out:
        try:
            done = subprocess.run(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise PeerError(f"{argv[0]}: {err}") from err
    if done.returncode != 0:
        tail = _tail(log) if log else ""
        raise PeerError(f"`{' '.join(argv)}` exited {done.returncode}{tail}")


def ensure_packages() -> None:
    """Install Debian's docker.io and buildah when either is missing."""
    if all(Path(tool).exists() for tool in (DOCKER, DOCKERD, BUILDAH)):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "docker.io", "buildah"]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        run(install, env=env, timeout=900)


class BuildKit:
    """BuildKit as built into dockerd 20.10, driven by Debian's `docker build`."""

    name = "BuildKit"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.socket = work / "docker.sock"
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_BUILDKIT": "1",
            "DOCKER_CONFIG": str(work / "client"),  # no credential helpers from ~/.docker
        }
        self.tags: set[str] = set()

    def docker(self, *args: str, log: Path | None = None) -> None:
        run([DOCKER, *args], env=self.env, log=log)

    def reset(self) -> None:
        """Forget every build: the build cache and the images built; busybox stays."""
        for tag in sorted(self.tags):
            with contextlib.suppress(PeerError):  # a failed build left no image
                self.docker("image", "rm", "-f", tag)
        self.tags.clear()
        self.docker("image", "prune", "-f")
        self.docker("builder", "prune", "-af")

    def build(self, workload: Workload, tag: str, log: Path) -> None:
        self.tags.add(tag)
        context, dockerfile = str(workload.context), str(workload.dockerfile)
        argv = ("build", "--network", "none", "--progress", "plain", "-f", dockerfile, "-t", tag)
        self.docker(*argv, context, log=log)


@contextlib.contextmanager
def buildkit(work: Path, busybox_archive: Path) -> Iterator[BuildKit]:
    """Start a private dockerd under WORK, load busybox:latest from a docker-archive, stop it."""
    if not Path(DOCKERD).exists():
        raise PeerError(f"{DOCKERD} is missing (apt-get install docker.io)")
    work.mkdir(parents=True)
    (work / "client").mkdir()
    # Short paths: the containerd socket lives under the exec root and must fit in sun_path.
    exec_root = Path(f"/tmp/bk-exec-{os.getpid()}")
    config = {"iptables": False, "bridge": "none", "insecure-registries": ["localhost:5000"]}
    (work / "daemon.json").write_text(json.dumps(config))
    peer = BuildKit(work)
    pidfile = work / "docker.pid"
    argv = [
        DOCKERD,
        f"--config-file={work / 'daemon.json'}",
        f"--data-root={work / 'data'}",
        f"--exec-root={exec_root}",
        f"--pidfile={pidfile}",
        f"--host=unix://{peer.socket}",
    ]
    daemon = None
    try:
        with open(work / "dockerd.log", "ab") as log:
            daemon = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        _wait_for_daemon(peer, daemon, work / "dockerd.log")
        peer.docker("load", "-i", str(busybox_archive), log=work / "load.log")
        yield peer
    finally:
        _stop_daemon(daemon, pidfile)
        _unmount_under(work)
        _unmount_under(exec_root)
        shutil.rmtree(exec_root, ignore_errors=True)


def _wait_for_daemon(peer: BuildKit, daemon: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise PeerError(f"dockerd exited {daemon.returncode}{_tail(log)}")
        probe = [DOCKER, "version", "--format", "{{.Server.Version}}"]
        if subprocess.run(probe, env=peer.env, capture_output=True).returncode == 0:
            return
        time.sleep(0.3)
    raise PeerError(f"dockerd did not answer on {peer.socket} within 60 s{_tail(log)}")


def _stop_daemon(daemon: subprocess.Popen[bytes] | None, pidfile: Path) -> None:
    """Stop dockerd by its pid file (it stops its containerd), then be sure it is gone."""
    pid = int(pidfile.read_text()) if pidfile.exists() else daemon.pid if daemon else None
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if daemon is None:
        return
    try:
        daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


class Buildah:
    """buildah bud with the overlay driver, a private storage root and chroot isolation."""

    name = "buildah"

    def __init__(self, work: Path, oci_layout: Path) -> None:
        self.work = work
        self.oci_layout = oci_layout
        self.root = work / "root"
        self.runroot = work / "run"

    def buildah(self, *args: str, log: Path | None = None) -> None:
        storage = ["--root", str(self.root), "--runroot", str(self.runroot)]
        run([BUILDAH, *storage, "--storage-driver", "overlay", *args], log=log)

    def reset(self) -> None:
        """A fresh storage root holding only busybox (pulled from buildgraph's OCI layout)."""
        self.remove()
        pulled = self.work / "pull.log"
        pulled.unlink(missing_ok=True)
        self.buildah("pull", "--quiet", f"oci:{self.oci_layout}:busybox:latest", log=pulled)
        image_id = pulled.read_text().split()[-1]  # --quiet prints only the image id
        self.buildah("tag", image_id, "busybox:latest")

    def remove(self) -> None:
        if self.root.exists():
            with contextlib.suppress(PeerError):
                self.buildah("rm", "--all")
        _unmount_under(self.work)
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.runroot, ignore_errors=True)

    def build(self, workload: Workload, tag: str, log: Path) -> None:
        context, dockerfile = str(workload.context), str(workload.dockerfile)
        options = ("--layers", "--isolation", "chroot", "--pull=never", "-f", dockerfile)
        self.buildah("bud", *options, "-t", tag, context, log=log)


@contextlib.contextmanager
def buildah(work: Path, oci_layout: Path) -> Iterator[Buildah]:
    """buildah with its storage under WORK; its containers and mounts are gone on the way out."""
    if not Path(BUILDAH).exists():
        raise PeerError(f"{BUILDAH} is missing (apt-get install buildah)")
    work.mkdir(parents=True)
    peer = Buildah(work, oci_layout)
    try:
        yield peer
    finally:
        if peer.root.exists():
            with contextlib.suppress(PeerError):
                peer.buildah("rm", "--all")
        _unmount_under(work)


def _unmount_under(directory: Path) -> None:
    """Lazily unmount every mount at or below DIRECTORY, deepest first."""
    prefix = str(directory.resolve())
    points = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _tail(log: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        return "\n    " + "\n    ".join(text) if text else ""
    return ""


def ratio(value: float | None) -> str:
    """A table cell for "x times the peer"."""
    return f"{value:.2f}x" if value is not None else "-"


def machine_summary() -> str:
    memory = Path("/proc/meminfo").read_text().split()[1]
    return f"{os.cpu_count()} cores, {int(memory) // 1024 // 1024} GiB"


def tool_versions() -> str:
    probes = {
        "buildgraph": ["buildgraph", "--version"],
        "dockerd": ["/usr/sbin/dockerd", "--version"],
        "buildah": ["/usr/bin/buildah", "--version"],
    }
    found = []
    for name, argv in probes.items():
        with contextlib.suppress(OSError):
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            found.append(f"{name}: {done.stdout.strip() or done.stderr.strip()}")
    return "; ".join(found)


def names_option(choices: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type for "a,b" lists drawn from `choices` (--only, --skip)."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip().lower() for name in text.split(",") if name.strip())
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {choices}")
        return names

    return parse


def note(message: str) -> None:
    """Progress and skips go to stderr; the table alone goes to stdout."""
    print(message, file=sys.stderr, flush=True)


def start_peers(
    only: Sequence[str],
    work: Path,
    seed: Path,
    buildgraph_command: Sequence[str],
    stack: contextlib.ExitStack,
) -> tuple[BuildKit | None, Buildah | None]:
    """Install and start the chosen peers with the busybox image of buildgraph's `seed`
    store; a peer that cannot start is left out (None) and said so."""
    kit = bah = None
    if {"buildkit", "buildah"} & set(only):
        try:
            ensure_packages()
        except PeerError as err:
            note(f"could not install the peers: {err}")
    if "buildkit" in only:
        archive = work / "busybox-docker.tar"
        try:
            export = ["image", "export", "busybox", "-o", f"type=docker,dest={archive}"]
            run([*buildgraph_command, *export, "--cache-dir", str(seed)])
            kit = stack.enter_context(buildkit(work / "buildkit", archive))
        except PeerError as err:
            note(f"BuildKit left out: {err}")
    if "buildah" in only:
        try:
            bah = stack.enter_context(buildah(work / "buildah", seed))
        except PeerError as err:
            note(f"buildah left out: {err}")
    return kit, bah
