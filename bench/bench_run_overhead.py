"""Overhead of one `RUN true` in the sandbox: namespaces, mounts, chroot, exec, teardown.

Usage: PYTHONPATH=. python bench/bench_run_overhead.py [RUNS]   (as root; default 50 runs per case)
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from buildgraph.worker.sandbox import RunSpec, run_in_sandbox

REPO = Path(__file__).resolve().parent.parent
BUDGET_MS = 50.0


def measure(spec: RunSpec, lowers: list[Path], scratch: Path, runs: int) -> list[float]:
    timings = []
    for _ in range(runs):
        upper = Path(tempfile.mkdtemp(prefix="upper-", dir=scratch))
        started = time.perf_counter()
        result = run_in_sandbox(spec, lowers, upper)
        timings.append((time.perf_counter() - started) * 1000)
        assert result.exit_code == 0, result.output_tail
    return timings


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory(prefix="bench-run-") as temp:
        scratch = Path(temp)
        rootfs = scratch / "rootfs"
        subprocess.run([str(REPO / "scripts/make-busybox-rootfs.sh"), str(rootfs)], check=True)
        layers = []
        for index in range(119):
            layer = scratch / "layers" / f"{index:03d}"
            layer.mkdir(parents=True)
            (layer / f"f{index}").write_text(str(index))
            layers.append(layer)
        true = RunSpec(argv=("/bin/sh", "-c", "true"), env=(("PATH", "/bin:/usr/bin"),))
        cases = [
            ("RUN true, 1 lower", true, [rootfs]),
            ("RUN true, network=none", RunSpec(true.argv, true.env, network="none"), [rootfs]),
            ("RUN true, 120 lowers", true, [*layers, rootfs]),
        ]
        measure(true, [rootfs], scratch, 3)  # warm the page cache and imports
        print(
            f"{'case':<26} {'runs':>5} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'max ms':>8}"
        )
        medians = []
        for title, spec, lowers in cases:
            timings = sorted(measure(spec, lowers, scratch, runs))
            p90 = timings[min(len(timings) - 1, int(len(timings) * 0.9))]
            median = statistics.median(timings)
            medians.append(median)
            low, high = timings[0], timings[-1]
            print(f"{title:<26} {runs:>5} {median:>10.1f} {p90:>8.1f} {low:>8.1f} {high:>8.1f}")
        verdict = "ok" if medians[0] < BUDGET_MS else "OVER BUDGET"
        print(f"budget: median of `RUN true` under {BUDGET_MS:.0f} ms: {verdict}")


if __name__ == "__main__":
    main()
