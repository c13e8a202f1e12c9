"""A real Dask cluster on 127.0.0.1 for tests and benchmarks: `dask scheduler` and `dask worker`
processes, each worker with its own buildgraph cache dir (BUILDGRAPH_CACHE_DIR)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 60.0


@dataclass
class DaskCluster:
    root: Path
    workers: int = 3
    threads: int = 1
    cache_dirs: bool = True  # False: workers without BUILDGRAPH_CACHE_DIR (the refusal test)
    env: dict[str, str] = field(default_factory=dict)  # more of the workers' environment
    scheduler: subprocess.Popen | None = None
    worker_processes: list[subprocess.Popen] = field(default_factory=list)
    address: str = ""

    def start(self) -> DaskCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        scheduler_file = self.root / "scheduler.json"
        log = (self.root / "scheduler.log").open("wb")
        self.scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                raise RuntimeError((self.root / "scheduler.log").read_text())
            time.sleep(0.1)
        self.address = json.loads(scheduler_file.read_text())["address"]
        for number in range(self.workers):
            self.add_worker(number)
        self.wait_for_workers(self.workers)
        return self

    def add_worker(self, number: int) -> subprocess.Popen:
        env = {**os.environ, **self.env}
        env.pop("BUILDGRAPH_CACHE_DIR", None)
        if self.cache_dirs:
            env["BUILDGRAPH_CACHE_DIR"] = str(self.root / f"worker{number}" / "cache")
        log = (self.root / f"worker{number}.log").open("ab")
        # --no-nanny: the process we SIGKILL is the worker itself, as when a machine dies
        process = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--host",
             "127.0.0.1", "--nthreads", str(self.threads), "--no-nanny", "--no-dashboard",
             "--name", f"worker{number}"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
        self.worker_processes.append(process)
        return process

    def wait_for_workers(self, count: int) -> None:
        from distributed import Client

        with Client(self.address, timeout=START_TIMEOUT) as client:
            client.wait_for_workers(count, timeout=START_TIMEOUT)

    def events(self, topic: str = "buildgraph") -> list[dict]:
        """What the workers logged on `topic` (the scheduler keeps them)."""
        from distributed import Client

        with Client(self.address, timeout=START_TIMEOUT) as client:
            return [message for _, message in client.get_events(topic)]

    def kill_worker(self, process: subprocess.Popen) -> None:
        os.killpg(process.pid, signal.SIGKILL)  # the worker and any RUN it started
        process.wait()

    def stop(self) -> None:
        for process in [*self.worker_processes, self.scheduler]:
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in [*self.worker_processes, self.scheduler]:
            if process is None:
                continue
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> DaskCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
