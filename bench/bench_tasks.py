"""Time the task phase: the N=50 monorepo with one test task per service.

Usage (as root, from the repository): python bench/bench_tasks.py [--services 50] [--repeat 3]
    [--keep]

The tree is bench/monorepo.py's (a base target on busybox and SERVICES services), and its
Buildfile gains one task per service, `svcNN-test`, run in that service's image: it reads the
service's sources (its inputs) and writes a count and a checksum to /out. Scenarios, each one
`buildgraph run` of every task:
- cold: images and tasks built and run (the store holds only busybox, imported untimed);
- no change: every image cached, every task replayed from the local cache;
- one changed service: one source file of svc00 changed: its image and its one task rerun.
The table gives the wall time of the command, the task phase alone (from the image phase's
last event to the last task event, in the command's json progress), and how many tasks ran
and were replayed. The
no-change and one-change rows are the best of REPEAT runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from monorepo import generate, touch_one
from peers import buildgraph_command, machine_summary, note, work_dir

REPO = Path(__file__).resolve().parent.parent
TASK = """\
  {name}-test:
    image: {name}
    run: >-
      ls /src/services/{name}/src | wc -l > /out/count &&
      cat /src/services/{name}/src/* | md5sum > /out/sum && cat /out/count /out/sum
    inputs: ["services/{name}/src/**"]
    outputs: [/out/count, /out/sum]
"""


def add_tasks(buildfile: Path, services: list[str]) -> list[str]:
    text = buildfile.read_text() + "tasks:\n" + "".join(TASK.format(name=s) for s in services)
    buildfile.write_text(text)
    return [f"{name}-test" for name in services]


def timed_run(buildfile: Path, tasks: list[str]) -> tuple[float, float, int, int]:
    """(wall seconds, task phase seconds, tasks run, tasks replayed) of one `buildgraph run`."""
    argv = [*buildgraph_command(), "run", "-f", str(buildfile), "--progress", "json", *tasks]
    start = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    if done.returncode != 0:
        sys.exit(f"buildgraph run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    events = [_parsed(line) for line in done.stdout.splitlines() if line.startswith("{")]
    tasks_seen = [e for e in events if e.get("key", "").startswith("task:")]
    steps_seen = [e["time"] for e in events if "time" in e and e not in tasks_seen]
    times = [e["time"] for e in tasks_seen]
    # From the last event of the image phase (the last export) to the last task event: the
    # phase's set-up and the hashing of every input count too.
    phase = max(times) - max(steps_seen) if times and steps_seen else 0.0
    ran = sum(1 for e in tasks_seen if e["state"] == "done")
    replayed = sum(1 for e in tasks_seen if e["state"] in ("cached", "remote"))
    return wall, phase, ran, replayed


def _parsed(line: str) -> dict:
    """One event; {} for a line that two RUN steps' outputs interleaved in the cold build
    (the step scheduler's log events come from several threads; the task phase's are
    serialized, so no task event is lost this way)."""
    try:
        return json.loads(line)
    except ValueError:
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    with work_dir("bench-tasks-", keep=args.keep) as work:
        repo = generate(work / "repo", args.services)
        tasks = add_tasks(repo.buildfile, [s.name for s in repo.services])
        rootfs = work / "busybox"
        subprocess.run([str(REPO / "scripts/make-busybox-rootfs.sh"), str(rootfs)], check=True)
        cache = repo.root / "cache"
        subprocess.run(
            [*buildgraph_command(), "image", "import", str(rootfs), "-t", "busybox",
             "--cache-dir", str(cache)],
            check=True, capture_output=True,
        )  # fmt: skip
        note(f"cold build of {args.services} services and tasks ...")
        rows = [("cold", *timed_run(repo.buildfile, tasks))]
        best = None
        for _ in range(args.repeat):
            result = timed_run(repo.buildfile, tasks)
            best = result if best is None or result[1] < best[1] else best
        rows.append(("no change", *best))  # type: ignore[misc]
        best = None
        for revision in range(1, args.repeat + 1):
            touch_one(repo, revision)
            result = timed_run(repo.buildfile, tasks)
            best = result if best is None or result[1] < best[1] else best
        rows.append(("one changed service", *best))  # type: ignore[misc]
        shutil.rmtree(repo.root / "out", ignore_errors=True)
    print(f"bench_tasks: {args.services} services, one test task each; {machine_summary()}")
    print(f"{'scenario':<22} {'wall s':>8} {'task phase s':>13} {'ran':>5} {'replayed':>9}")
    for name, wall, phase, ran, replayed in rows:
        print(f"{name:<22} {wall:>8.2f} {phase:>13.3f} {ran:>5} {replayed:>9}")


if __name__ == "__main__":
    main()
