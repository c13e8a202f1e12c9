"""Time a monorepo build: buildgraph's one graph against a CI script of BuildKit and of buildah.

Usage (as root, from the repository): python bench/bench_monorepo.py [--services 12]
    [--large 50] [--wide 1000x10] [--repeat N] [--only buildgraph,buildkit,buildah]
    [--tree monorepo,shared] [--skip large,wide] [--keep]

Two generated trees, each built by every engine in the same run:
- `monorepo` (bench/monorepo.py): a base target on busybox and SERVICES multi-stage services
  `FROM base`. A peer runs the CI script a monorepo without buildgraph has: build base/ with
  `-t base`, then each service, one after another; the one-file change is to svc00.
- `shared` (../shared/bench/make_workload.py, seed 1, see bench/shared_tree.py): its own base
  and services; BuildKit runs the script `make_workload.py plain DIR --tool docker` prints
  (buildah is left out of this tree); the one-file change is `make_workload.py mutate DIR`.
buildgraph runs `buildgraph run` once for every target. Scenarios: cold (the engine's cache
holds only the busybox image, imported beforehand and not timed), no-op (the same build
again), one-file change (one source file changed). Then buildgraph alone: a no-op rebuild of LARGE
services, `buildgraph plan` of a graph of 1000 targets x 10 steps, and the scheduler's time per
cached step. Times are wall-clock seconds of the command lines; no-op and one-file change are the
best of REPEAT runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from monorepo import Monorepo, Service, generate, generate_wide, touch_one
from peers import (
    DOCKER,
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
from shared_tree import REGISTRY, SharedTree, change_one, docker_script, generate_shared
from workloads import Workload

REPO = Path(__file__).resolve().parent.parent
ENGINES = ("buildgraph", "buildkit", "buildah")
PARTS = ("peers", "large", "wide")  # what --skip can leave out
TREES = ("monorepo", "shared")  # what --tree chooses from
# The targets: a ratio to BuildKit's time, or an absolute bound.
COLD_VS_BUILDKIT = 0.8
NO_OP_VS_BUILDKIT = 0.5
ONE_FILE_VS_BUILDKIT = 1.0
LARGE_NO_OP_SECONDS = 1.0
WIDE_PLAN_SECONDS = 2.0
CACHED_STEP_MS = 2.0


class Engine(Protocol):
    name: str

    def reset(self) -> None: ...  # forget every build: the next one is cold

    def build_all(self, repo: Monorepo | SharedTree, log: Path) -> None: ...  # every target


class Buildgraph:
    """`buildgraph run` of the whole Buildfile, with a cache dir that starts as a copy of SEED."""

    name = "buildgraph"

    def __init__(self, cache: Path, seed: Path) -> None:
        self.cache = cache
        self.seed = seed
        self.command = buildgraph_command()

    def reset(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)
        shutil.copytree(self.seed, self.cache, symlinks=True)

    def build_all(self, repo: Monorepo | SharedTree, log: Path) -> None:
        options = ["-f", str(repo.buildfile), "--cache-dir", str(self.cache), "--progress", "json"]
        if isinstance(repo, SharedTree):  # its Buildfile names a remote cache; nothing listens
            options += ["--cache-from", "", "--cache-to", ""]
        run([*self.command, "run", *options], log=log)

    def plan(self, buildfile: Path, log: Path) -> None:
        run([*self.command, "plan", "-f", str(buildfile), "--cache-dir", str(self.cache)], log=log)


class CiScript:
    """A peer driven the way CI drives it: base first (tagged `base`), then each service."""

    def __init__(self, peer) -> None:  # peers.BuildKit or peers.Buildah
        self.peer = peer
        self.name = peer.name.lower()  # the key of its column: buildkit, buildah

    def reset(self) -> None:
        self.peer.reset()

    def build_all(self, repo: Monorepo | SharedTree, log: Path) -> None:
        if isinstance(repo, SharedTree):  # the workload's own CI script (BuildKit only)
            self.peer.tags.update(repo.tags)  # so that reset removes them
            run(["bash", "-c", docker_script(repo, DOCKER)], env=self.peer.env, log=log)
            return
        for service in (repo.base, *repo.services):
            self.peer.build(_workload(service), service.name, log)


def _workload(service: Service) -> Workload:
    return Workload(0, service.name, service.context, service.dockerfile, "")


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    size: str  # N services, or targets x steps
    seconds: dict[str, float | None]  # engine -> wall seconds (None: failed or not run)
    unit: str  # "s" or "ms"
    target: str  # the target in words
    met: bool | None  # None when there was nothing to compare with
    note: str = ""
    tree: str = "monorepo"


def main() -> None:
    options = parse_options()
    command = shlex.join(["python", "bench/bench_monorepo.py", *sys.argv[1:]])
    rows: list[Row] = []
    with work_dir("bench-monorepo-", keep=options.keep) as work:
        try:
            note(f"work dir: {work}")
            seed = make_seed(work)
            if "peers" not in options.skip:
                for tree in options.tree:
                    rows += compare_engines(options, work, seed, tree)
            if "large" not in options.skip:
                rows += large_no_op(options, work, seed)
            if "wide" not in options.skip:
                rows += wide_plan(options, work, seed)
        finally:
            print_report(command, options, rows)


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=12, help="N for the peer scenarios")
    parser.add_argument("--large", type=int, default=50, help="N for the large no-op (50)")
    parser.add_argument("--wide", type=_wide, default=(1000, 10), help="TARGETSxSTEPS to plan")
    parser.add_argument("--repeat", type=int, default=3, help="best of N warm runs (default 3)")
    parser.add_argument("--only", type=names_option(ENGINES), default=ENGINES, help="engines, a,b")
    parser.add_argument("--skip", type=names_option(PARTS), default=(), help=f"parts of {PARTS}")
    parser.add_argument("--tree", type=names_option(TREES), default=TREES, help="trees, a,b")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work dir")
    return parser.parse_args()


def _wide(text: str) -> tuple[int, int]:
    targets, _, steps = text.lower().partition("x")
    try:
        return int(targets), int(steps or 10)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected TARGETSxSTEPS, got {text!r}") from err


def make_seed(work: Path) -> Path:
    """A cache dir holding only busybox:latest: every buildgraph cache starts as a copy."""
    seed = work / "seed"
    rootfs = work / "busybox-rootfs"
    subprocess.run([str(REPO / "scripts/make-busybox-rootfs.sh"), str(rootfs)], check=True)
    bootstrap = Buildgraph(seed, seed)
    for name in ("busybox", f"{REGISTRY}/busybox:latest"):  # the shared tree's name for it
        import_rootfs = ["image", "import", str(rootfs), "-t", name, "--cache-dir", str(seed)]
        run([*bootstrap.command, *import_rootfs])
    return seed


# -- BuildKit and buildah against buildgraph on one tree --------------------------------------
def compare_engines(options: argparse.Namespace, work: Path, seed: Path, tree: str) -> list[Row]:
    shared = tree == "shared"
    if shared:
        repo: Monorepo | SharedTree = generate_shared(work / "shared", options.services)
        changed = repo.changed
    else:
        repo = generate(work / "repo", options.services)
        changed = repo.services[0].name
    logs = work / "logs" / tree
    logs.mkdir(parents=True, exist_ok=True)
    only = tuple(name for name in options.only if not (shared and name == "buildah"))
    with contextlib.ExitStack() as stack:
        engines = start_engines(only, work / tree, seed, stack)
        for engine in engines:
            warm_up(engine, work)
        times: dict[tuple[str, str], float | None] = {}
        started: dict[str, list[dict]] = {}  # buildgraph's started steps, per scenario
        for engine in engines:
            times["cold", engine.name] = timed(engine, repo, logs / f"cold-{engine.name}.log", True)
        for scenario in ("no-op", "one-file change"):
            for attempt in range(options.repeat):
                if scenario == "one-file change" and isinstance(repo, SharedTree):
                    change_one(repo)  # the same change for every engine
                elif scenario == "one-file change":
                    touch_one(repo, revision=attempt + 1)
                for engine in engines:
                    log = logs / f"{scenario.replace(' ', '-')}-{attempt}-{engine.name}.log"
                    seconds = timed(engine, repo, log, False)
                    best = times.get((scenario, engine.name), seconds)
                    times[scenario, engine.name] = _least(best, seconds)
                    if engine.name == "buildgraph" and attempt == 0:
                        started[scenario] = started_steps(log)
    n = str(options.services)
    rows = [
        _versus("cold", n, times, COLD_VS_BUILDKIT, "cache: busybox only"),
        _versus("no-op", n, times, NO_OP_VS_BUILDKIT, _ran(started.get("no-op"))),
    ]
    one_file = _versus("one-file change", n, times, ONE_FILE_VS_BUILDKIT, "")
    steps = started.get("one-file change")
    only_changed = steps is not None and all(step["target"] == [changed] for step in steps)
    rows.append(
        Row(
            one_file.scenario,
            n,
            one_file.seconds,
            "s",
            one_file.target + f"; only {changed}'s steps run",
            None if one_file.met is None else one_file.met and only_changed,
            _ran(steps),
        )
    )
    return [replace(row, tree=tree) for row in rows]


def start_engines(
    only: tuple[str, ...], work: Path, seed: Path, stack: contextlib.ExitStack
) -> list[Engine]:
    """Start each chosen engine; one that cannot start is left out (and said so)."""
    ours = Buildgraph(work / "buildgraph" / "cache", seed)
    engines: list[Engine] = [ours] if "buildgraph" in only else []
    work.mkdir(parents=True, exist_ok=True)
    kit, bah = start_peers(only, work, seed, ours.command, stack)
    if kit is not None:  # the shared tree's Dockerfiles name busybox by the registry's name
        kit.docker("tag", "busybox:latest", f"{REGISTRY}/busybox:latest")
    engines += [CiScript(peer) for peer in (kit, bah) if peer is not None]
    return engines


def warm_up(engine: Engine, work: Path) -> None:
    """One untimed build of a one-service tree, so no timed build pays for cold binaries."""
    repo = generate(work / "warm-up", 1, sources=2)
    with contextlib.suppress(PeerError):  # a real failure shows up in the timed builds
        engine.reset()
        engine.build_all(repo, work / "logs" / f"warm-up-{engine.name}.log")


def timed(engine: Engine, repo: Monorepo | SharedTree, log: Path, cold: bool) -> float | None:
    try:
        if cold:
            engine.reset()
        os.sync()  # the last build's dirty pages must not land in this one's time
        started = time.perf_counter()
        engine.build_all(repo, log)
        seconds = time.perf_counter() - started
    except PeerError as err:
        note(f"{engine.name} failed ({log.name}): {err}")
        return None
    note(f"{engine.name:<10} {log.stem:<28} {seconds:8.2f} s")
    return seconds


def started_steps(log: Path) -> list[dict]:
    """The steps a `buildgraph run --progress json` started, from its log (a target's
    export, which tags the image, is an event without a step key)."""
    steps = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if not isinstance(event, dict) or event.get("state") != "started":
                continue
            if "key" in event:
                steps.append(event)
    return steps


def _ran(steps: list[dict] | None) -> str:
    if steps is None:
        return ""
    targets = sorted({name for step in steps for name in step["target"]})
    return f"{len(steps)} steps run" + (f" ({', '.join(targets)})" if targets else "")


def _versus(
    scenario: str,
    size: str,
    times: dict[tuple[str, str], float | None],
    bound: float,
    note_text: str,
) -> Row:
    seconds = {engine: times.get((scenario, engine)) for engine in ENGINES}
    ratio = _ratio(seconds["buildgraph"], seconds["buildkit"])
    met = None if ratio is None else ratio <= bound
    return Row(scenario, size, seconds, "s", f"<= {bound:g}x BuildKit", met, note_text)


# -- buildgraph alone: a large no-op, a wide plan, the scheduler per cached step --------------
def large_no_op(options: argparse.Namespace, work: Path, seed: Path) -> list[Row]:
    repo = generate(work / "large", options.large)
    ours = Buildgraph(work / "large-cache", seed)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    cold = timed(ours, repo, logs / "large-cold.log", True)
    best = None
    for attempt in range(options.repeat):
        best = _least(best, timed(ours, repo, logs / f"large-no-op-{attempt}.log", False))
    n = str(options.large)
    rows = [
        Row("cold (info)", n, {"buildgraph": cold}, "s", "-", None, "cache: busybox only"),
        Row(
            "no-op",
            n,
            {"buildgraph": best},
            "s",
            f"< {LARGE_NO_OP_SECONDS:g} s",
            None if best is None else best < LARGE_NO_OP_SECONDS,
            _ran(started_steps(logs / "large-no-op-0.log")) if best is not None else "",
        ),
    ]
    if cold is not None:
        rows += scheduler_per_cached_step(repo, ours.cache, options.repeat, n)
    return rows


def scheduler_per_cached_step(repo: Monorepo, cache: Path, repeat: int, size: str) -> list[Row]:
    """In-process: compile the built tree, then time the scheduler over its all-cached graph."""
    from buildgraph.cache.local import LocalStore
    from buildgraph.cache.steps import StepIndex
    from buildgraph.commands.compile import compile_project, project_graph
    from buildgraph.frontend.buildfile import load_project
    from buildgraph.solver.events import CollectingSink
    from buildgraph.solver.facts import gather_and_plan
    from buildgraph.solver.scheduler import execute
    from buildgraph.worker.execute import Worker
    from buildgraph.worker.local_executor import LocalExecutor
    from buildgraph.worker.snapshot import SnapshotStore

    project = load_project(repo.buildfile, env=os.environ, overrides=())
    store = LocalStore(cache)
    compile_seconds, scheduler_seconds, steps, all_cached = None, None, 0, True
    for _ in range(repeat):
        started = time.perf_counter()
        compiled = compile_project(project, (), store=store, client=_no_registry)
        graph = project_graph(compiled)
        compiled_at = time.perf_counter()
        index = StepIndex(cache / "steps")
        plan, local = gather_and_plan(graph, index=index, store=store, remote=None, no_cache=False)
        worker = Worker(store, SnapshotStore(cache / "snapshots"))  # nothing will run
        outcome = execute(
            plan,
            executor=LocalExecutor(worker, index, None, local.records),
            sink=CollectingSink(),
            jobs=os.cpu_count() or 2,
        )
        done = time.perf_counter()
        steps = len(graph)
        all_cached = all_cached and len(outcome.cached) == steps
        compile_seconds = _least(compile_seconds, compiled_at - started)
        scheduler_seconds = _least(scheduler_seconds, done - compiled_at)
    per_step = scheduler_seconds * 1000 / steps if scheduler_seconds and steps else None
    where = f"{steps} steps, all cached: {'yes' if all_cached else 'NO'}"
    return [
        Row(
            "compile (in-process)",
            size,
            {"buildgraph": compile_seconds},
            "s",
            "-",
            None,
            f"project -> union graph, {steps} steps",
        ),
        Row(
            "scheduler per cached step",
            size,
            {"buildgraph": per_step},
            "ms",
            f"< {CACHED_STEP_MS:g} ms",
            None if per_step is None else per_step < CACHED_STEP_MS and all_cached,
            where,
        ),
    ]


def wide_plan(options: argparse.Namespace, work: Path, seed: Path) -> list[Row]:
    targets, steps = options.wide
    buildfile = generate_wide(work / "wide", targets, steps)
    ours = Buildgraph(work / "wide-cache", seed)
    ours.reset()
    size = f"{targets}x{steps}"
    best = None
    for attempt in range(options.repeat):
        log = work / "logs" / f"wide-plan-{attempt}.log"
        log.parent.mkdir(exist_ok=True)
        started = time.perf_counter()
        try:
            ours.plan(buildfile, log)
        except PeerError as err:
            note(f"buildgraph plan failed: {err}")
            break
        best = _least(best, time.perf_counter() - started)
        note(f"buildgraph plan {size} #{attempt + 1}: {time.perf_counter() - started:.2f} s")
    in_process, nodes = plan_in_process(buildfile, ours.cache, options.repeat)
    bound = f"< {WIDE_PLAN_SECONDS:g} s"
    return [
        Row(
            "plan (CLI)",
            size,
            {"buildgraph": best},
            "s",
            bound,
            None if best is None else best < WIDE_PLAN_SECONDS,
            "`buildgraph plan` wall time, process start-up included",
        ),
        Row(
            "compile + plan (in-process)",
            size,
            {"buildgraph": in_process},
            "s",
            bound,
            None if in_process is None else in_process < WIDE_PLAN_SECONDS,
            f"load_project + plan_project, {nodes} distinct steps",
        ),
    ]


def plan_in_process(buildfile: Path, cache: Path, repeat: int) -> tuple[float | None, int]:
    from buildgraph.cache.local import LocalStore
    from buildgraph.commands.plan import plan_project
    from buildgraph.frontend.buildfile import load_project

    best, nodes = None, 0
    for _ in range(repeat):
        started = time.perf_counter()
        project = load_project(buildfile, env=os.environ, overrides=())
        _, graph = plan_project(project, (), store=LocalStore(cache), client=_no_registry)
        best = _least(best, time.perf_counter() - started)
        nodes = len(graph)
    return best, nodes


def _no_registry():
    raise PeerError("the benchmark builds reach no registry")


# -- the report -------------------------------------------------------------------------------
def print_report(command: str, options: argparse.Namespace, rows: list[Row]) -> None:
    print(f"command: {command}")
    print(f"machine: {machine_summary()}; wall-clock; no-op and one-file: best of {options.repeat}")
    print(f"versions: {tool_versions()}")
    print()
    header = (
        f"{'tree':<9}{'scenario':<28} {'N':>8} {'buildgraph':>10} {'BuildKit':>9} {'buildah':>9} "
        f"{'x BuildKit':>10} {'x buildah':>9}  {'target':<40} {'met':<4} note"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = [_value(row.seconds.get(engine), row.unit) for engine in ENGINES]
        versus = [_ratio(row.seconds.get("buildgraph"), row.seconds.get(e)) for e in ENGINES[1:]]
        met = "-" if row.met is None else "yes" if row.met else "NO"
        print(
            f"{row.tree:<9}{row.scenario:<28} {row.size:>8} "
            f"{cells[0]:>10} {cells[1]:>9} {cells[2]:>9} "
            f"{ratio(versus[0]):>10} {ratio(versus[1]):>9}  {row.target:<40} {met:<4} {row.note}"
        )


def _least(best: float | None, seconds: float | None) -> float | None:
    if seconds is None:
        return best
    return seconds if best is None else min(best, seconds)


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or not theirs else ours / theirs


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" + (" ms" if unit == "ms" else "")


if __name__ == "__main__":
    main()
