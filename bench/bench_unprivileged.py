"""Time the monorepo built inside an ordinary container (chroot isolation) beside the host's
namespaces isolation and BuildKit, in one run.

Usage (as root, from the repository): python bench/bench_unprivileged.py [--services 12]
    [--repeat 3] [--cold-repeat 1] [--keep]

The tree is bench/monorepo.py's (a base target on busybox and SERVICES multi-stage services).
Engines:
- buildgraph, namespaces: `buildgraph run --isolation namespaces` on this host.
- buildgraph, unprivileged: the same command with `docker exec` in a container of a private
  dockerd started with no extra flag (Docker's default capabilities and seccomp profile, as a
  CI runner's job container), which then probes and takes the chroot isolation. The container
  runs this machine's /usr and this checkout, bound read-only, so both columns run the same
  code; it is started once and kept, as a CI job's container is; `docker exec` costs are in
  its times.
- BuildKit: Debian's dockerd 20.10 driven as a CI script (base, then each service).
Scenarios: cold (caches hold only busybox; best of COLD_REPEAT, the engines taking turns), no-op,
one-file change (best of REPEAT).
Targets (issue 12): unprivileged cold <= 1.0x BuildKit's and <= 1.5x ours with namespaces;
no-op and one-file change <= 0.5x BuildKit.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from bench_monorepo import Buildgraph, CiScript, _least, _ratio, make_seed, timed, warm_up
from monorepo import generate, touch_one
from peers import (
    DOCKER,
    PeerError,
    buildgraph_command,
    buildkit,
    machine_summary,
    note,
    run,
    tool_versions,
    work_dir,
)

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
COLD_VS_BUILDKIT = 1.0
COLD_VS_NAMESPACES = 1.5
WARM_VS_BUILDKIT = 0.5


class Namespaces(Buildgraph):
    name = "namespaces"

    def build_all(self, repo, log: Path) -> None:
        options = ["-f", str(repo.buildfile), "--cache-dir", str(self.cache), "--progress", "json"]
        run([*self.command, "run", *options, "--isolation", "namespaces"], log=log)


class Unprivileged:
    """`buildgraph run` by `docker exec` in a default container; the work dir is bound at the
    same path, so the Buildfile and the cache dir are where the host has them."""

    name = "unprivileged"

    def __init__(self, peer, work: Path, seed: Path) -> None:  # peer: a started peers.BuildKit
        self.peer = peer
        self.cache = work / "unprivileged" / "cache"
        self.seed = seed
        self.container = "buildgraph-unprivileged-bench"
        image = _bare_image(work)
        peer.docker("import", str(image), "bare-host-tools:bench")
        peer.docker(
            "run",
            "-d",
            "--name",
            self.container,
            "--network",
            "host",
            "-v",
            "/usr:/usr:ro",
            "-v",
            f"{REPO}:{REPO}:ro",
            "-v",
            f"{work}:{work}",
            "bare-host-tools:bench",
            "sleep",
            "infinity",
        )

    def reset(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(self.seed), str(self.cache)], check=True)

    def build_all(self, repo, log: Path) -> None:
        command = [
            f"{VENV}/bin/buildgraph",
            "run",
            "-f",
            str(repo.buildfile),
            "--cache-dir",
            str(self.cache),
            "--progress",
            "json",
        ]
        env = ["-e", f"PATH={VENV}/bin:/usr/bin:/bin"]
        run([DOCKER, "exec", *env, self.container, *command], env=self.peer.env, log=log)

    def stop(self) -> None:
        with contextlib.suppress(PeerError):
            self.peer.docker("rm", "-f", self.container)


def _bare_image(work: Path) -> Path:
    """A root of dirs and the merged-/usr links; /usr comes from the host."""
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
    path = work / "bare.tar"
    path.write_bytes(buffer.getvalue())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=3, help="best of N warm runs (default 3)")
    parser.add_argument(
        "--cold-repeat",
        type=int,
        default=1,
        help="best of N cold builds, the engines taking turns (default 1)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary work dir")
    options = parser.parse_args()
    command = shlex.join(["python", "bench/bench_unprivileged.py", *sys.argv[1:]])
    with work_dir("bench-unprivileged-", keep=options.keep) as work:
        note(f"work dir: {work}")
        seed = make_seed(work)
        repo = generate(work / "repo", options.services)
        logs = work / "logs"
        logs.mkdir()
        archive = work / "busybox-docker.tar"
        export = ["image", "export", "busybox", "-o", f"type=docker,dest={archive}"]
        run([*buildgraph_command(), *export, "--cache-dir", str(seed)])
        with buildkit(work / "buildkit", archive) as kit:
            unprivileged = Unprivileged(kit, work, seed)
            try:
                engines = [Namespaces(work / "ns" / "cache", seed), unprivileged, CiScript(kit)]
                times = measure(engines, repo, work, logs, options.repeat, options.cold_repeat)
            finally:
                unprivileged.stop()
    report(command, options, times)


def measure(engines, repo, work: Path, logs: Path, repeat: int, cold_repeat: int = 1) -> dict:
    for engine in engines:
        warm_up(engine, work)
    times: dict[tuple[str, str], float | None] = {}
    for attempt in range(cold_repeat):
        for engine in engines:
            seconds = timed(engine, repo, logs / f"cold-{attempt}-{engine.name}.log", True)
            times["cold", engine.name] = _least(times.get(("cold", engine.name)), seconds)
    for scenario in ("no-op", "one-file change"):
        for attempt in range(repeat):
            if scenario == "one-file change":
                touch_one(repo, revision=attempt + 1)
            for engine in engines:
                log = logs / f"{scenario.replace(' ', '-')}-{attempt}-{engine.name}.log"
                seconds = timed(engine, repo, log, False)
                times[scenario, engine.name] = _least(times.get((scenario, engine.name)), seconds)
    return times


def report(command: str, options: argparse.Namespace, times: dict) -> None:
    print(f"command: {command}")
    print(
        f"machine: {machine_summary()}; wall-clock; cold: best of {options.cold_repeat}, "
        f"warm scenarios: best of {options.repeat}"
    )
    print(f"versions: {tool_versions()}")
    print()
    header = (
        f"{'scenario':<16} {'N':>3} {'unprivileged':>12} {'namespaces':>10} {'BuildKit':>9} "
        f"{'x BuildKit':>10} {'x namespaces':>12}  {'target':<36} met"
    )
    print(header)
    print("-" * len(header))
    for scenario in ("cold", "no-op", "one-file change"):
        ours = times.get((scenario, "unprivileged"))
        ns = times.get((scenario, "namespaces"))
        kit = times.get((scenario, "buildkit"))
        versus_kit, versus_ns = _ratio(ours, kit), _ratio(ours, ns)
        if scenario == "cold":
            target = f"<= {COLD_VS_BUILDKIT:g}x BuildKit, <= {COLD_VS_NAMESPACES:g}x namespaces"
            met = (
                None
                if versus_kit is None or versus_ns is None
                else versus_kit <= COLD_VS_BUILDKIT and versus_ns <= COLD_VS_NAMESPACES
            )
        else:
            target = f"<= {WARM_VS_BUILDKIT:g}x BuildKit"
            met = None if versus_kit is None else versus_kit <= WARM_VS_BUILDKIT
        print(
            f"{scenario:<16} {options.services:>3} {_cell(ours):>12} {_cell(ns):>10} "
            f"{_cell(kit):>9} {_cell(versus_kit, 'x'):>10} {_cell(versus_ns, 'x'):>12}  "
            f"{target:<36} {'-' if met is None else 'yes' if met else 'NO'}"
        )


def _cell(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.2f}{unit}"


if __name__ == "__main__":
    main()
