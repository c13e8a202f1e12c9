"""Time buildgraph against BuildKit and buildah on five realistic Dockerfiles, cold and cached.

Usage (as root, from the repository): python bench/bench_engine.py [--repeat N]
    [--only buildgraph,buildkit,buildah] [--workloads 1,2,...] [--keep]

Cold means the tool's cache and store hold nothing but busybox; cached means the same build again
right after. Each time is the best of N wall-clock runs of the tool's command line. Targets: at
most 1.0x BuildKit's time and at most 0.5x buildah's, in both scenarios.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from peers import (
    PeerError,
    buildgraph_command,
    machine_summary,
    names_option,
    note,
    ratio,
    run,
    start_peers,
    tool_versions,
    work_dir,
)
from workloads import Workload, make_workloads

REPO = Path(__file__).resolve().parent.parent
ENGINES = ("buildgraph", "buildkit", "buildah")
SCENARIOS = ("cold", "cached")
TARGET_VS_BUILDKIT = 1.0
TARGET_VS_BUILDAH = 0.5
WARM_UP = "FROM busybox\nRUN echo warm > /warm\n"


class Engine(Protocol):
    name: str

    def reset(self) -> None: ...  # forget every build: the next one is cold

    def build(self, workload: Workload, tag: str, log: Path) -> None: ...


class Buildgraph:
    """buildgraph's own CLI, with a cache dir that starts as a copy of SEED (busybox only)."""

    name = "buildgraph"

    def __init__(self, work: Path, seed: Path) -> None:
        self.cache = work / "cache"
        self.seed = seed
        self.command = buildgraph_command()

    def reset(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)
        shutil.copytree(self.seed, self.cache, symlinks=True)

    def build(self, workload: Workload, tag: str, log: Path) -> None:
        context, dockerfile, cache = (
            str(workload.context),
            str(workload.dockerfile),
            str(self.cache),
        )
        options = ["-f", dockerfile, "-t", tag, "--cache-dir", cache, "--progress", "plain"]
        run([*self.command, "build", *options, context], log=log)


@dataclass(frozen=True, slots=True)
class Measurement:
    workload: Workload
    scenario: str
    engine: str
    seconds: float | None  # None when the build failed


def main() -> None:
    options = parse_options()
    options.load_before = _load()
    if options.load_before > 0.5:
        note(f"warning: load average {options.load_before:.2f}; other work will skew the times")
    command = shlex.join(["python", "bench/bench_engine.py", *sys.argv[1:]])
    with work_dir("bench-engine-", keep=options.keep) as work:
        with contextlib.ExitStack() as stack:
            workloads = make_workloads(work / "workloads", options.workloads)
            engines = start_engines(options.only, work, stack)
            if not engines:
                raise SystemExit("no engine could start")
            note(f"work dir: {work}")
            for engine in engines:
                warm_up(engine, work)
            results = [
                measurement
                for workload in workloads
                for engine in engines
                for measurement in measure(engine, workload, options.repeat, work)
            ]
        print_report(
            command, options, workloads, [engine.name.lower() for engine in engines], results
        )


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs (default 1)")
    parser.add_argument(
        "--only", type=names_option(ENGINES), default=ENGINES, help="comma-separated engines"
    )
    parser.add_argument("--workloads", type=_numbers, default=(1, 2, 3, 4, 5), help="e.g. 1,3")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work dir")
    return parser.parse_args()


def _numbers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def start_engines(only: tuple[str, ...], work: Path, stack: contextlib.ExitStack) -> list[Engine]:
    """Prepare busybox once, then start each chosen engine; one that fails is skipped."""
    seed = work / "seed"
    rootfs = work / "busybox-rootfs"
    subprocess.run([str(REPO / "scripts/make-busybox-rootfs.sh"), str(rootfs)], check=True)
    bootstrap = Buildgraph(work, seed)
    run(
        [
            *bootstrap.command,
            "image",
            "import",
            str(rootfs),
            "-t",
            "busybox",
            "--cache-dir",
            str(seed),
        ]
    )
    engines: list[Engine] = []
    if "buildgraph" in only:
        engines.append(Buildgraph(work / "buildgraph", seed))
    kit, bah = start_peers(only, work, seed, bootstrap.command, stack)
    engines += [peer for peer in (kit, bah) if peer is not None]
    return engines


def warm_up(engine: Engine, work: Path) -> None:
    """One untimed tiny build, so the first timed one does not pay for cold binaries."""
    context = work / "warm-up"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(WARM_UP)
    workload = Workload(0, "warm-up", context, context / "Dockerfile", "")
    with contextlib.suppress(PeerError):  # a real failure shows up in the timed builds
        engine.reset()
        engine.build(workload, "bench-warm-up", work / f"warm-up-{engine.name}.log")


def measure(engine: Engine, workload: Workload, repeat: int, work: Path) -> Iterator[Measurement]:
    """Best-of-REPEAT cold builds, then best-of-REPEAT cached rebuilds of the same workload."""
    tag = f"bench-{workload.number}-{workload.name}"
    log = work / "logs" / f"{workload.number}-{workload.name}-{engine.name}.log"
    log.parent.mkdir(exist_ok=True)
    for scenario in SCENARIOS:
        best: float | None = None
        for attempt in range(repeat):
            try:
                if scenario == "cold":
                    engine.reset()
                os.sync()  # don't let the last build's dirty pages land in this one's time
                started = time.perf_counter()
                engine.build(workload, tag, log)
                seconds = time.perf_counter() - started
            except PeerError as err:
                note(f"{engine.name} {workload.name} {scenario} #{attempt + 1} failed: {err}")
                best = None
                break
            best = seconds if best is None else min(best, seconds)
            note(f"{engine.name:<10} {workload.name:<12} {scenario:<6} {seconds:8.2f} s")
        yield Measurement(workload, scenario, engine.name.lower(), best)
        if best is None:  # the cached run means nothing after a failed cold one
            if scenario == "cold":
                yield Measurement(workload, "cached", engine.name.lower(), None)
            return


def print_report(
    command: str,
    options: argparse.Namespace,
    workloads: list[Workload],
    engines: list[str],
    results: list[Measurement],
) -> None:
    seconds = {(m.workload.number, m.scenario, m.engine): m.seconds for m in results}
    print(f"command: {command}")
    print(f"machine: {machine_summary()}; best of {options.repeat}; wall-clock seconds")
    print(f"versions: {tool_versions()}")
    print(f"load average (1 min) at start {options.load_before:.2f}, at end {_load():.2f}")
    print()
    header = (
        f"{'workload':<16} {'scenario':<8} {'buildgraph':>10} {'BuildKit':>9} {'buildah':>9} "
        f"{'x BuildKit':>10} {'x buildah':>9}  target (<= {TARGET_VS_BUILDKIT:g}x / "
        f"<= {TARGET_VS_BUILDAH:g}x)"
    )
    print(header)
    print("-" * len(header))
    for scenario in SCENARIOS:
        for workload in workloads:
            row = {engine: seconds.get((workload.number, scenario, engine)) for engine in ENGINES}
            print(_row(f"{workload.number} {workload.name}", scenario, row, engines))
    for scenario in SCENARIOS:
        total = {
            engine: _sum([seconds.get((w.number, scenario, engine)) for w in workloads])
            for engine in ENGINES
        }
        print(_row("TOTAL", scenario, total, engines))
    print()
    for workload in workloads:
        print(f"{workload.number} {workload.name}: {workload.about}")


def _row(title: str, scenario: str, row: dict[str, float | None], engines: list[str]) -> str:
    ours, theirs_bk, theirs_ba = row["buildgraph"], row["buildkit"], row["buildah"]
    versus_buildkit = _ratio(ours, theirs_bk)
    versus_buildah = _ratio(ours, theirs_ba)
    verdicts = []
    if versus_buildkit is not None:
        verdicts.append(versus_buildkit <= TARGET_VS_BUILDKIT)
    if versus_buildah is not None:
        verdicts.append(versus_buildah <= TARGET_VS_BUILDAH)
    target = ("yes" if all(verdicts) else "NO") if verdicts else "-"
    if verdicts and len(verdicts) < 2:
        target += " (one peer)"
    cells = [
        _seconds(row[engine], engine in engines) for engine in ("buildgraph", "buildkit", "buildah")
    ]
    return (
        f"{title:<16} {scenario:<8} {cells[0]:>10} {cells[1]:>9} {cells[2]:>9} "
        f"{ratio(versus_buildkit):>10} {ratio(versus_buildah):>9}  {target}"
    )


def _sum(values: list[float | None]) -> float | None:
    return None if not values or any(value is None for value in values) else sum(values)


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or not theirs else ours / theirs


def _seconds(value: float | None, ran: bool) -> str:
    return f"{value:.2f}" if value is not None else ("FAIL" if ran else "-")


def _load() -> float:
    return os.getloadavg()[0]


if __name__ == "__main__":
    main()
