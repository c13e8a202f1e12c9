"""A real CNCF distribution registry (Debian `docker-registry`) for the tests, on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

REGISTRY_BINARY = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RegistryServer:
    """One registry process; `auth` is the registry's `auth:` section (None = anonymous)."""

    root: Path
    port: int = field(default_factory=free_port)
    auth: dict | None = None
    tls: tuple[Path, Path] | None = None  # (certificate chain, private key)
    access_log: bool = False  # log every request to registry.log (see `requests`)
    process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    def config(self) -> dict:
        http: dict = {"addr": self.host, "secret": "buildgraph-tests"}
        if self.tls:
            http["tls"] = {"certificate": str(self.tls[0]), "key": str(self.tls[1])}
        doc: dict = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": not self.access_log}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
            },
            "http": http,
        }
        if self.auth:
            doc["auth"] = self.auth
        return doc

    def start(self) -> RegistryServer:
        self.root.mkdir(parents=True, exist_ok=True)
        config_path = self.root / "config.yml"
        config_path.write_text(yaml.safe_dump(self.config()))
        log = open(self.root / "registry.log", "ab")  # noqa: SIM115 - lives as long as the process
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self.process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"registry exited: {(self.root / 'registry.log').read_text()}")
            if self.tls:  # listening is ready; no request with verification turned off
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), timeout=1),
                ):
                    return
            else:
                with contextlib.suppress(requests.RequestException):
                    requests.get(f"{self.url}/v2/", timeout=1)
                    return
            time.sleep(0.05)
        raise RuntimeError("registry did not start in time")

    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request so far, from the access log (`access_log=True`)."""
        log = (self.root / "registry.log").read_text(errors="replace")
        return re.findall(r'"([A-Z]+) (/v2/\S*) HTTP/[\d.]+"', log)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_registry(root: Path, **options: object) -> Iterator[RegistryServer]:
    with RegistryServer(root, **options) as server:  # type: ignore[arg-type]
        yield server
