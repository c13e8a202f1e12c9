"""Where a cold monorepo build's wall time goes beyond the RUN commands, from its --trace.

Usage (as root, from the repository): python bench/bench_trace.py [--services 12]
    [--workload monorepo,shared] [--export] [--keep]

Each workload is built cold (a cache holding only busybox) by one `buildgraph run --trace FILE`:
`monorepo` is bench/monorepo.py's tree (the one bench_monorepo.py times against BuildKit), and
`shared` is ../shared/bench/make_workload.py's (seed 1; its Dockerfiles say FROM
<registry>/busybox:latest, tagged so in the seed cache: no registry is asked). The trace is then
read back: the wall time of the command (its lane-0 span, from process start), the time before
the first step starts and after the last one ends (with --export: the remote cache export, to a
Debian docker-registry on 127.0.0.1, finishing), and for every instant in between what was
running, in this order of precedence: a RUN command, a COPY's copying, diff (the upper dir
written as a layer tar), commit (blob fsync, snapshot adopt), snapshot prepare, a target's
export, a FROM, a step outside its phases (first-use imports of the sandbox and copier, the
isolation probe, the hand-off to a worker thread), or nothing (the scheduler between steps).
Each instant counts once, under the first of those that was running, so the rows add up to the
wall time. CPU-bound phases on 2
cores: run the script on a quiet machine for figures to quote.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from monorepo import generate
from peers import buildgraph_command, note

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from registry_server import RegistryServer  # noqa: E402 - tests/ is not a package

SHARED_WORKLOAD = REPO.parent / "shared" / "bench" / "make_workload.py"
WORKLOADS = ("monorepo", "shared")
REGISTRY = "127.0.0.1:5999"  # only a name in FROM lines; the seed cache holds the image
# What an instant is charged to, first match wins.
BUCKETS = (
    "RUN command",
    "COPY copying",
    "diff",
    "commit",
    "snapshot prepare",
    "export",
    "FROM",
    "in a step, outside its phases (first-use imports, isolation probe, thread hand-off)",
    "queued for one of -j threads, nothing else running",
    "between steps (scheduler, cache records)",
)


def main() -> None:
    options = parse_options()
    work = Path(tempfile.mkdtemp(prefix="bench-trace-"))
    # Byte-code cached as an installed wheel's is (see peers.work_dir): under
    # PYTHONDONTWRITEBYTECODE=1 every buildgraph process would recompile its modules.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    results = {}
    registry = None
    try:
        if options.export:
            registry = RegistryServer(work / "registry").start()
        seed = make_seed(work)
        warm_up(work, seed)
        for workload in options.workload:
            buildfile = make_tree(work, workload, options.services)
            cache = work / f"cache-{workload}"
            shutil.copytree(seed, cache, symlinks=True)
            trace = work / f"trace-{workload}.json"
            os.sync()
            start = time.perf_counter()
            argv = [*buildgraph_command(), "run", "-f", str(buildfile), "--cache-dir", str(cache)]
            argv += ["--progress", "plain", "--trace", str(trace)]
            # The shared tree's Buildfile names a remote cache on REGISTRY, where nothing
            # listens: its failed lookups would be timed too.
            argv += ["--cache-from", ""]
            to = f"{registry.host}/cache/{workload}" if registry is not None else ""
            argv += ["--cache-to", to]
            log = work / f"{workload}.log"
            with open(log, "wb") as out:
                done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                raise SystemExit(f"{workload}: exit {done.returncode}; see {log}")
            note(f"{workload}: {wall:.2f} s")
            results[workload] = (wall, breakdown(json.loads(trace.read_text())))
            if options.keep:
                shutil.copy(trace, Path.cwd() / trace.name)
                note(f"kept {Path.cwd() / trace.name} (open it in https://ui.perfetto.dev)")
        print_report(results, options)
    finally:
        if registry is not None:
            registry.stop()
        shutil.rmtree(work, ignore_errors=True)


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=12, help="N services (default 12)")
    parser.add_argument("--workload", default=",".join(WORKLOADS), help="monorepo,shared")
    parser.add_argument("--export", action="store_true", help="also export the remote cache")
    parser.add_argument("--keep", action="store_true", help="copy the traces to the current dir")
    options = parser.parse_args()
    options.workload = [name for name in options.workload.split(",") if name]
    if unknown := set(options.workload) - set(WORKLOADS):
        parser.error(f"--workload: unknown {', '.join(sorted(unknown))}")
    return options


def make_seed(work: Path) -> Path:
    seed = work / "seed"
    rootfs = work / "busybox-rootfs"
    subprocess.run([str(REPO / "scripts/make-busybox-rootfs.sh"), str(rootfs)], check=True)
    for name in ("busybox", f"{REGISTRY}/busybox:latest"):
        argv = [*buildgraph_command(), "image", "import", str(rootfs), "-t", name]
        subprocess.run([*argv, "--cache-dir", str(seed)], check=True, capture_output=True)
    return seed


def warm_up(work: Path, seed: Path) -> None:
    """One untimed cold build of a one-service tree: the timed builds find the byte-code
    cached and the binaries in the page cache, as on a machine that built before."""
    buildfile = generate(work / "warm-up", 1, sources=2).buildfile
    cache = work / "cache-warm-up"
    shutil.copytree(seed, cache, symlinks=True)
    argv = [*buildgraph_command(), "run", "-f", str(buildfile), "--cache-dir", str(cache), "-q"]
    subprocess.run(argv, check=True, capture_output=True)


def make_tree(work: Path, workload: str, services: int) -> Path:
    if workload == "monorepo":
        return generate(work / "monorepo", services).buildfile
    root = work / "shared"
    argv = [sys.executable, str(SHARED_WORKLOAD), "generate", str(root), "-n", str(services)]
    subprocess.run([*argv, "--registry", REGISTRY], check=True, capture_output=True)
    return root / "Buildfile.yaml"


def breakdown(doc: dict) -> dict[str, float]:
    """Seconds per bucket; each instant of the command's span is charged once."""
    spans = [event for event in doc["traceEvents"] if event["ph"] == "X"]
    (command,) = [span for span in spans if span["cat"] == "command"]
    begin, end = command["ts"], command["ts"] + command["dur"]
    # A step's span opens when the scheduler starts it; it executes after its "queued" span.
    executes = {
        (span["args"]["step"], span["tid"]): span["ts"] + span["dur"]
        for span in spans
        if span["cat"] == "phase" and span["name"] == "queued"
    }
    intervals: list[tuple[int, int, str]] = []
    for span in spans:
        bucket = bucket_of(span)
        start = span["ts"]
        if span["cat"] == "step":
            start = max(start, executes.get((span["name"], span["tid"]), start))
        if bucket:
            intervals.append((start, span["ts"] + span["dur"], bucket))
    steps = [span for span in spans if span["cat"] in ("step", "export")]
    first = min((span["ts"] for span in steps), default=end)
    last = max((span["ts"] + span["dur"] for span in steps), default=end)
    cuts = sorted({first, last, *(t for a, b, _ in intervals for t in (a, b))})
    cuts = [t for t in cuts if first <= t <= last]
    seconds = dict.fromkeys(("before the first step", *BUCKETS, "after the last step"), 0.0)
    seconds["before the first step"] = (first - begin) / 1e6
    seconds["after the last step"] = (end - last) / 1e6
    rank = {name: index for index, name in enumerate(BUCKETS)}
    for left, right in itertools.pairwise(cuts):
        active = [name for a, b, name in intervals if a <= left and right <= b]
        name = min(active, key=rank.__getitem__) if active else BUCKETS[-1]
        seconds[name] += (right - left) / 1e6
    seconds["total (the command's span)"] = (end - begin) / 1e6
    return seconds


def bucket_of(span: dict) -> str:
    if span["cat"] == "export":
        return "export"
    if span["cat"] == "step":
        return "FROM" if span["name"].startswith("FROM") else BUCKETS[-3]
    if span["cat"] != "phase":
        return ""
    if span["name"] == "queued":
        return BUCKETS[-2]
    if span["name"] == "run":
        return "RUN command" if "] RUN " in span["args"]["step"] else "COPY copying"
    return span["name"]  # diff, commit, snapshot prepare


def print_report(results: dict[str, tuple[float, dict[str, float]]], options) -> None:
    print(f"\n{' '.join(sys.argv)}")
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at the end\n")
    names = list(results)
    suffix = " + export" if options.export else ""
    heads = " | ".join(f"{name} N={options.services}{suffix}" for name in names)
    print(f"| where the wall time goes | {heads} |")
    print("|---|" + "---|" * len(names))
    rows = next(iter(results.values()))[1].keys() if results else []
    for row in rows:
        cells = []
        for name in names:
            seconds = results[name][1]
            total = seconds["total (the command's span)"]
            cells.append(f"{seconds[row]:.2f} s ({seconds[row] / total:.0%})")
        print(f"| {row} | " + " | ".join(cells) + " |")
    walls = " | ".join(f"{results[name][0]:.2f} s" for name in names)
    print(f"| wall clock measured outside | {walls} |")


if __name__ == "__main__":
    main()
