"""A cache registry that dies or hangs mid-run (a real registry, killed or SIGSTOPped): after the
first operation that runs out of retries the registry is down for the run, with one warning;
lookups have a short budget of their own. The times are in bench/bench_dying_registry.py; the
timeouts here are hang guards, far above what the run takes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_runs import write_repo
from registry_server import RegistryServer

from buildgraph.errors import RegistryDown, RegistryError
from buildgraph.registry.client import RegistryClient
from buildgraph.registry.reference import parse_reference

STEPS = 8
BUILDFILE = """version: 1
cache: {{dir: cache, remote: "{remote}"}}
targets:
  app: {{context: app, tags: ["app:1"]}}
"""


class CountingProxy:
    """Forwards 127.0.0.1:port to the registry and counts the connections made to it: after
    the registry is killed, each one is an attempt that gets nowhere."""

    def __init__(self, target_port: int, *, stall_after: int | None = None) -> None:
        self.target_port = target_port
        self.stall_after = stall_after  # bytes of a response passed on before it goes silent
        self.closed = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()  # the registry is gone: as good as a refused connection
                continue
            for source, dest, limit in (
                (client, upstream, None),
                (upstream, client, self.stall_after),
            ):
                threading.Thread(target=self._pipe, args=(source, dest, limit), daemon=True).start()

    def _pipe(self, source: socket.socket, dest: socket.socket, limit: int | None) -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if limit is not None and sent + len(data) > limit:
                    dest.sendall(data[: limit - sent])
                    self.closed.wait()  # silent from here on, the connection left open
                    break
                dest.sendall(data)
                sent += len(data)
        for sock in (source, dest):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


@pytest.fixture
def proxy(fresh_registry: RegistryServer) -> Iterator[CountingProxy]:
    front = CountingProxy(fresh_registry.port)
    try:
        yield front
    finally:
        front.close()


def make_repo(root: Path, busybox_cache: Path, remote: str) -> Path:
    runs = "".join(f"RUN echo {n} > /{n}\n" for n in range(STEPS))
    files = {
        "app/Dockerfile": "FROM busybox\n" + runs,
        "Buildfile.yaml": BUILDFILE.format(remote=remote),
    }
    return write_repo(root, files, busybox_cache)


def run_killing(repo: Path, on_first_step_done: callable) -> tuple[int, str]:
    """`buildgraph run` in a process of its own; `on_first_step_done` is called when the first
    RUN step is done (its export is then under way)."""
    argv = [sys.executable, "-m", "buildgraph", "run", "-f", str(repo / "Buildfile.yaml")]
    process = subprocess.Popen(
        [*argv, "--progress", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stderr is not None
    fired = False
    for line in process.stdout:
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if not fired and event.get("state") == "done" and "RUN" in event.get("instruction", ""):
                fired = True
                on_first_step_done()
    err = process.stderr.read()
    return process.wait(), err


@pytest.mark.timeout(90)
def test_a_registry_killed_mid_run_is_given_up_once(
    fresh_registry: RegistryServer, proxy: CountingProxy, busybox_cache: Path, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", busybox_cache, f"127.0.0.1:{proxy.port}/cache/app")
    before_kill: list[int] = []

    def kill() -> None:
        assert fresh_registry.process is not None
        fresh_registry.process.kill()
        fresh_registry.process.wait()
        before_kill.append(proxy.connections)

    code, err = run_killing(repo, kill)
    assert code == 0, err
    assert err.count("buildgraph: warning:") == 1, err
    assert "Traceback" not in err
    # After the kill: one export runs out of its retries (3 attempts), those in flight stop at
    # their next attempt; no export retries on its own (the old code: 6 attempts for each of
    # the 7 exports left, 42, and a minute and a half of waiting).
    attempts = proxy.connections - before_kill[0]
    assert attempts <= 12, attempts


@pytest.mark.timeout(90)
def test_a_hanging_registry_costs_the_lookup_budget_not_the_timeout(
    fresh_registry: RegistryServer, busybox_cache: Path, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", busybox_cache, f"{fresh_registry.host}/cache/app")
    assert fresh_registry.process is not None
    os.kill(fresh_registry.process.pid, signal.SIGSTOP)  # accepts connections, never answers
    try:
        argv = [sys.executable, "-m", "buildgraph", "run", "-f", str(repo / "Buildfile.yaml")]
        # The default --registry-timeout (120 s) stands: the old code waited for all of it.
        done = subprocess.run(argv, capture_output=True, text=True, timeout=80)
    finally:
        os.kill(fresh_registry.process.pid, signal.SIGCONT)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("buildgraph: warning:") == 1, done.stderr
    assert "app:1" in done.stdout


@pytest.mark.timeout(90)
def test_a_registry_that_hangs_mid_run_costs_its_silence_timeout_once(
    fresh_registry: RegistryServer, busybox_cache: Path, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", busybox_cache, f"{fresh_registry.host}/cache/app")
    assert fresh_registry.process is not None
    pid = fresh_registry.process.pid
    try:
        # Exports under way wait 5 s for an answer, then the registry is down; the old code
        # waited 60 s per request and retried (2 minutes), and cancelled each upload (10 s).
        code, err = run_killing(repo, lambda: os.kill(pid, signal.SIGSTOP))
    finally:
        os.kill(pid, signal.SIGCONT)
    assert code == 0, err
    assert err.count("buildgraph: warning:") == 1, err


def test_after_one_operation_runs_out_of_retries_the_registry_is_down(
    fresh_registry: RegistryServer,
) -> None:
    repository = parse_reference(f"{fresh_registry.host}/down/test:latest")
    fresh_registry.stop()
    client = RegistryClient(retries=2, backoff=0.01, total_timeout=30)
    with pytest.raises(RegistryError) as first:
        client.get_manifest(repository)
    assert not isinstance(first.value, RegistryDown)
    assert "unreachable" in str(first.value)
    fresh_registry.start()  # back again: this run has given it up all the same
    with pytest.raises(RegistryDown, match="unreachable earlier in this run"):
        client.get_manifest(repository)
    with pytest.raises(RegistryDown):
        client.blob_exists(repository, "sha256:" + "0" * 64)


@pytest.mark.timeout(40)
def test_a_download_that_goes_silent_ends_the_registry_for_the_cache(
    fresh_registry: RegistryServer,
) -> None:
    """A blob download that stops mid-body: the cache's client waits 5 s of silence, does not
    retry, and does not ask that registry again (the old client: 60 s, three times over)."""
    repository = parse_reference(f"{fresh_registry.host}/silent/test")
    data = os.urandom(1 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with RegistryClient() as client:
        client.upload_blob(repository, digest, len(data), io.BytesIO(data))
    stalling = CountingProxy(fresh_registry.port, stall_after=200_000)
    try:
        through = parse_reference(f"127.0.0.1:{stalling.port}/silent/test")
        cache_client = RegistryClient().best_effort()
        with pytest.raises(RegistryError) as first:
            cache_client.fetch_blob(through, digest, io.BytesIO())
        assert not isinstance(first.value, RegistryDown)
        asked = stalling.connections
        assert asked <= 2  # the TLS probe of a loopback host, then one GET: no retry
        with pytest.raises(RegistryDown):
            cache_client.fetch_blob(through, digest, io.BytesIO())
        assert stalling.connections == asked  # not asked again
    finally:
        stalling.close()
