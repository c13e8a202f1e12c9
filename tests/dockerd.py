"""A private dockerd for tests that check our images with Docker itself (`docker load`, `docker
run`): its own data root, exec root and unix socket, no iptables, no bridge (containers use
`--network host`), stopped and unmounted afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

DOCKER = "/usr/bin/docker"  # Debian's client (docker.io)
DOCKERD = "/usr/sbin/dockerd"


@dataclass(frozen=True)
class Dockerd:
    socket: Path
    client_config: Path

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DOCKER_HOST": f"unix://{self.socket}",
            "DOCKER_CONFIG": str(self.client_config),
        }

    def docker(
        self, *args: str, timeout: float = 300, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `docker ARGS`; raise with its output when it fails (unless `check` is false)."""
        done = subprocess.run(
            [DOCKER, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=stdin,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {done.returncode}\n{done.stderr}")
        return done


@contextlib.contextmanager
def private_dockerd(work: Path, insecure_registries: Sequence[str] = ()) -> Iterator[Dockerd]:
    """`insecure_registries`: hosts (127.0.0.1:PORT) pulled from without verifying TLS."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "client").mkdir(exist_ok=True)
    exec_root = Path(f"/tmp/bg-dockerd-{os.getpid()}")  # containerd's socket path must be short
    config = {"iptables": False, "bridge": "none", "insecure-registries": list(insecure_registries)}
    (work / "daemon.json").write_text(json.dumps(config))
    daemon = Dockerd(work / "docker.sock", work / "client")
    pidfile = work / "docker.pid"
    argv = [
        DOCKERD,
        f"--config-file={work / 'daemon.json'}",
        f"--data-root={work / 'data'}",
        f"--exec-root={exec_root}",
        f"--pidfile={pidfile}",
        f"--host=unix://{daemon.socket}",
    ]
    log = work / "dockerd.log"
    process = None
    try:
        with open(log, "ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"dockerd exited {process.returncode}: {log.read_text()}")
            probe = [DOCKER, "version", "--format", "{{.Server.Version}}"]
            if subprocess.run(probe, env=daemon.env(), capture_output=True).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"dockerd did not answer within 60 s: {log.read_text()}")
            time.sleep(0.3)
        yield daemon
    finally:
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for root in (work, exec_root):
            _unmount_below(root)
        shutil.rmtree(exec_root, ignore_errors=True)


def _unmount_below(root: Path) -> None:
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
