"""Time the fresh-machine scenario: an empty local cache and a full remote cache in a registry.

Usage (as root, from the repository): python bench/bench_remote.py [--services 12] [--repeat N]
    [--only buildgraph,buildkit,buildah] [--profile] [--keep]

One registry (Debian's docker-registry on 127.0.0.1, tests/registry_server.py, its storage on
tmpfs: see registry_storage) serves the whole run. The N-service monorepo of bench/monorepo.py
is built twice by every engine, on two "machines" that share nothing but that registry:

- machine A, cold (only busybox in the store), exports its cache: buildgraph
  `run --cache-to HOST/cache/bg`; BuildKit (dockerd 20.10) `docker build --build-arg
  BUILDKIT_INLINE_CACHE=1` then `docker push` of base and of each service, the only registry
  cache its 20.10 client offers; buildah `bud --layers --cache-to HOST/bh/cache`. buildgraph's
  cold build without export is timed too, for the cost of exporting.
- machine B, a fresh store holding only busybox (imported beforehand, not timed), builds the same
  tree from the remote cache: buildgraph `run --cache-from HOST/cache/bg`; BuildKit
  `docker pull` of base (a rebuild would get a new image id, and every service would miss),
  then `docker build --cache-from HOST/bk/NAME` of each service; buildah
  `bud --layers --cache-from HOST/bh/cache`. Timed: the whole CI script, downloads included.
- buildgraph's cold machine then exports its cache by itself (`warm --build --cache-to` a new
  repository: nothing left to build, every step exported): the cost of A's export with no
  build beside it.
- buildgraph's machine B runs once more, every step now in its store: what any run costs
  (start-up, compiling the graph, tagging). For reference, the report sets B's time beyond that
  beside the cold build's.
- buildgraph's machine A once more with `cache.mode: min` (the layers of the targets' images,
  an entry per step that adds one, as BuildKit's min mode and its inline cache keep; the
  default, max, exports every step), and a machine B from that cache.

buildgraph's steps run on B are its `started` events (exports left out); its bytes downloaded are
the summary's "remote cache: N bytes downloaded" line, set beside the sizes of the layers the
final images hold that B did not already have. A peer's steps run are the RUN/COPY vertices its
log shows without a cache hit. Times are wall-clock seconds; with --repeat N each buildgraph time
is the best of N. Each attempt runs cold, A, then B from what that A exported, so the machine's
drift hits all three alike (every export attempt goes to a repository of its own, so none finds
the blobs of the one before). A last table gives the CPU seconds of buildgraph's best runs, its
own and the registry process's (which shares this machine's cores), and the least wall time that
much CPU allows. --profile runs buildgraph's machine B and machine A once more under py-spy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench_monorepo import Buildgraph, make_seed, started_steps
from monorepo import Monorepo, Service, generate
from peers import (
    BuildKit,
    PeerError,
    buildah,
    buildkit,
    ensure_packages,
    machine_summary,
    names_option,
    note,
    ratio,
    run,
    tool_versions,
    work_dir,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from registry_server import RegistryServer  # noqa: E402 - tests/ is not a package

ENGINES = ("buildgraph", "buildkit", "buildah")
# The targets.
FRESH_VS_BUILDKIT = 1.0  # machine B against BuildKit's machine B
FRESH_VS_COLD = 0.3  # machine B against our own cold build
EXPORT_VS_NO_EXPORT = 1.2  # a cold build that exports against one that does not
DOWNLOADED = re.compile(r"remote cache: (\d+) bytes downloaded")


@dataclass
class Result:
    """One engine's times and what its machine-B build did; None where it failed or did not run."""

    cold: float | None = None  # buildgraph only: cold, no export
    export: float | None = None  # machine A: cold build that exports the cache
    fresh: float | None = None  # machine B: fresh store, remote cache
    again: float | None = None  # buildgraph only: machine B once more, every step local now
    export_min: float | None = None  # buildgraph only: machine A with cache.mode min
    export_alone: float | None = None  # buildgraph only: the export of a finished build, by itself
    fresh_min: float | None = None  # buildgraph only: machine B from that mode-min cache
    steps_run_min: int | None = None  # on machine B from the mode-min cache
    steps_run: int | None = None  # on machine B
    downloaded: int | None = None  # buildgraph only: bytes, from its summary line
    needed: int | None = None  # buildgraph only: layer bytes of the final images B lacked
    cpu: dict[str, Cpu] = field(default_factory=dict)  # buildgraph only: scenario -> its best run
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Cpu:
    """CPU seconds one timed run cost: buildgraph's process and the registry's."""

    wall: float
    ours: float
    registry: float


class CpuMeter:
    """CPU seconds used by our child processes and by the registry process between two calls.
    Export costs CPU on both sides; on a machine that hosts its own registry, the two cores
    the build uses are the ones they share."""

    def __init__(self, registry_pid: int) -> None:
        self.registry_pid = registry_pid
        self.start = self._now()

    def _now(self) -> tuple[float, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        fields = Path(f"/proc/{self.registry_pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        registry = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        return children.ru_utime + children.ru_stime, registry

    def read(self, wall: float) -> Cpu:
        ours, registry = self._now()
        return Cpu(wall, ours - self.start[0], registry - self.start[1])


def main() -> None:
    options = parse_options()
    command = shlex.join(["python", "bench/bench_remote.py", *sys.argv[1:]])
    results: dict[str, Result] = {}
    with work_dir("bench-remote-", keep=options.keep) as work, registry_storage(work) as storage:
        registry = RegistryServer(storage)
        try:
            note(f"work dir: {work}; registry storage: {storage}")
            seed = make_seed(work)
            repo = generate(work / "repo", options.services)
            (work / "logs").mkdir()
            registry.start()
            note(f"registry: {registry.host}")
            if "buildgraph" in options.only:
                results["buildgraph"] = measure_buildgraph(options, work, seed, repo, registry)
            if {"buildkit", "buildah"} & set(options.only):
                try:
                    ensure_packages()
                except PeerError as err:
                    note(f"could not install the peers: {err}")
            if "buildkit" in options.only:
                results["buildkit"] = measure_buildkit(work, seed, repo, registry.host)
            if "buildah" in options.only:
                results["buildah"] = measure_buildah(work, seed, repo, registry.host)
            if options.profile and "buildgraph" in options.only:
                profile_runs(work, seed, repo, registry.host)
        finally:
            registry.stop()
            print_report(command, options, results)


@contextlib.contextmanager
def registry_storage(work: Path) -> Iterator[Path]:
    """The registry's root on tmpfs (/dev/shm) when there is one, removed afterwards.

    The registry stands in for a remote one, yet shares this machine's cores; on disk (ext4) it
    spent a third more CPU, much of it allocating inodes, and that share varied from run to run
    with the file system's state."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield work / "registry"
        return
    root = Path(tempfile.mkdtemp(prefix="bench-registry-", dir=shm))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=12, help="N services (default 12)")
    parser.add_argument("--repeat", type=int, default=1, help="best of N buildgraph runs")
    parser.add_argument("--only", type=names_option(ENGINES), default=ENGINES, help="engines, a,b")
    parser.add_argument("--profile", action="store_true", help="py-spy of buildgraph on A and B")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work dir")
    return parser.parse_args()


# -- buildgraph -------------------------------------------------------------------------------
def measure_buildgraph(
    options: argparse.Namespace, work: Path, seed: Path, repo: Monorepo, registry: RegistryServer
) -> Result:
    result = Result()
    host = registry.host
    assert registry.process is not None
    pid = registry.process.pid
    logs = work / "logs"
    warm_up = Buildgraph(work / "bg-warm-up", seed)  # no timed build pays for cold binaries
    with contextlib.suppress(PeerError):
        warm_up.reset()
        warm_up.build_all(generate(work / "warm-up", 1, sources=2), logs / "bg-warm-up.log")
    minimal = min_mode(repo)
    for attempt in range(options.repeat):  # interleaved, so load drifts hit all alike
        plain = _machine(work / f"bg-cold-{attempt}", seed)
        meter = CpuMeter(pid)
        seconds = _timed("buildgraph", "cold, no export", _run, plain, repo, logs, ())
        _keep_best(result, "cold", seconds, meter)
        result.cold = _least(result.cold, seconds)
        if seconds is not None:  # the same export as A's, with no build beside it
            alone = f"{host}/cache/bgalone{attempt}"
            meter = CpuMeter(pid)
            seconds = _timed(
                "buildgraph", "export alone (warm --build)", _export, plain, repo, logs, alone
            )
            _keep_best(result, "export_alone", seconds, meter)
            result.export_alone = _least(result.export_alone, seconds)
        cache_repo = f"{host}/cache/bg{attempt or ''}"  # each attempt exports afresh
        machine_a = _machine(work / f"bg-a-{attempt}", seed)
        export = ("--cache-to", cache_repo)
        meter = CpuMeter(pid)
        seconds = _timed("buildgraph", "A: cold + export", _run, machine_a, repo, logs, export)
        _keep_best(result, "export", seconds, meter)
        result.export = _least(result.export, seconds)
        if seconds is None:
            result.notes.append(f"machine A failed in attempt {attempt + 1}; no B after it")
            continue
        _measure_machine_b(result, work, seed, repo, cache_repo, attempt, pid)
        _measure_min_mode(result, work, seed, minimal, f"{host}/cache/bgmin{attempt}", attempt, pid)
    return result


def _measure_machine_b(
    result: Result, work: Path, seed: Path, repo: Monorepo, cache_repo: str, attempt: int, pid: int
) -> None:
    """Machine B from the cache that machine A has just exported, then once more."""
    logs = work / "logs"
    machine_b = _machine(work / f"bg-b-{attempt}", seed)
    log = logs / f"bg-b-{attempt}.log"
    read = ("--cache-from", cache_repo)
    meter = CpuMeter(pid)
    seconds = _timed("buildgraph", "B: fresh, --cache-from", _run, machine_b, repo, logs, read, log)
    _keep_best(result, "fresh", seconds, meter)
    result.fresh = _least(result.fresh, seconds)
    if seconds is None:
        return
    if result.steps_run is None:
        result.steps_run = len(started_steps(log))
        found = DOWNLOADED.findall(log.read_text(errors="replace"))
        result.downloaded = int(found[-1]) if found else 0
        result.needed = missing_layer_bytes(machine_b.cache, seed)
    # what any run costs: start-up, compiling the graph, tagging
    again_log = logs / f"bg-b-{attempt}-again.log"
    again = _timed("buildgraph", "B again, all local", _run, machine_b, repo, logs, read, again_log)
    result.again = _least(result.again, again)


def min_mode(repo: Monorepo) -> Monorepo:
    """The same tree with a Buildfile that sets cache.mode min (a sibling, so paths still hold):
    only the layers of the targets' images are exported, as BuildKit's min mode keeps."""
    path = repo.buildfile.with_name("Buildfile.min.yaml")
    text = repo.buildfile.read_text()
    minimal = text.replace("cache: {dir: cache}", "cache: {dir: cache, mode: min}", 1)
    assert minimal != text, "the monorepo's Buildfile no longer has the cache line this expects"
    path.write_text(minimal)
    return replace(repo, buildfile=path)


def _measure_min_mode(
    result: Result, work: Path, seed: Path, repo: Monorepo, cache_repo: str, attempt: int, pid: int
) -> None:
    """Machine A exporting with cache.mode min, then machine B from that cache."""
    logs = work / "logs"
    machine_a = _machine(work / f"bg-a-min-{attempt}", seed)
    meter = CpuMeter(pid)
    export = ("--cache-to", cache_repo)
    seconds = _timed("buildgraph", "A, mode min", _run, machine_a, repo, logs, export)
    _keep_best(result, "export_min", seconds, meter)
    result.export_min = _least(result.export_min, seconds)
    if seconds is None:
        return
    machine_b = _machine(work / f"bg-b-min-{attempt}", seed)
    log = logs / f"bg-b-min-{attempt}.log"
    read = ("--cache-from", cache_repo)
    seconds = _timed(
        "buildgraph", "B from the mode-min cache", _run, machine_b, repo, logs, read, log
    )
    result.fresh_min = _least(result.fresh_min, seconds)
    if seconds is not None and result.steps_run_min is None:
        result.steps_run_min = len(started_steps(log))


def _machine(cache: Path, seed: Path) -> Buildgraph:
    """A buildgraph "machine" whose store is a fresh copy of the seed (busybox only; not timed)."""
    machine = Buildgraph(cache, seed)
    machine.reset()
    return machine


def _keep_best(result: Result, scenario: str, seconds: float | None, meter: CpuMeter) -> None:
    """Remember the CPU of this run if it is the scenario's fastest so far."""
    best = result.cpu.get(scenario)
    if seconds is not None and (best is None or seconds < best.wall):
        result.cpu[scenario] = meter.read(seconds)


def _run(
    engine: Buildgraph,
    repo: Monorepo,
    logs: Path,
    extra: tuple[str, ...],
    log: Path | None = None,
    command: tuple[str, ...] = ("run",),
) -> None:
    options = ["-f", str(repo.buildfile), "--cache-dir", str(engine.cache), "--progress", "json"]
    run([*engine.command, *command, *options, *extra], log=log or logs / f"{engine.cache.name}.log")


def _export(engine: Buildgraph, repo: Monorepo, logs: Path, cache_repo: str) -> None:
    """`warm --build` on a machine whose every step is local: it builds nothing and exports
    every step the (new, empty) cache repository lacks, i.e. all of them."""
    cache = ("--cache-from", cache_repo, "--cache-to", cache_repo)
    log = logs / "bg-export-alone.log"
    _run(engine, repo, logs, cache, log, command=("warm", "--build"))


def missing_layer_bytes(cache: Path, seed: Path) -> int:
    """The bytes of the distinct layers CACHE's tagged images hold that SEED's do not."""
    have = _layers(seed)
    return sum(size for digest, size in _layers(cache).items() if digest not in have)


def _layers(layout: Path) -> dict[str, int]:
    """Layer digest -> size over every image tagged in the OCI layout LAYOUT."""
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    layers = {}
    for entry in index["manifests"]:
        manifest = json.loads((blobs / entry["digest"].removeprefix("sha256:")).read_text())
        layers |= {layer["digest"]: layer["size"] for layer in manifest["layers"]}
    return layers


def profile_runs(work: Path, seed: Path, repo: Monorepo, host: str) -> None:
    """Machine B, and machine A's export, once more under py-spy (every thread, idle included,
    so waits count); the main thread's heaviest buildgraph functions go to stderr."""
    runs = {
        "B (--cache-from)": ("--cache-from", f"{host}/cache/bg"),
        "A (--cache-to)": ("--cache-to", f"{host}/cache/bg-profile"),  # a new repo: all pushed
    }
    for number, (label, extra) in enumerate(runs.items()):
        engine = Buildgraph(work / f"bg-profile-{number}", seed)
        engine.reset()
        out = work / "logs" / f"profile-{number}.txt"
        options = [
            "-f",
            str(repo.buildfile),
            "--cache-dir",
            str(engine.cache),
            "--progress",
            "json",
        ]
        spy = ["py-spy", "record", "--format", "raw", "--rate", "250", "--threads", "--idle"]
        try:
            run([*spy, "-o", str(out), "--", *engine.command, "run", *options, *extra])
        except PeerError as err:
            note(f"py-spy failed: {err}")
            continue
        note(f"py-spy, {label} (raw stacks in {out}); main thread, inclusive seconds:")
        for line in _main_thread_hotspots(out, 250)[:20]:
            note(line)


def _main_thread_hotspots(raw: Path, rate: int) -> list[str]:
    """From py-spy's raw stacks: seconds per buildgraph function on the main thread, inclusive."""
    seconds: dict[str, float] = {}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, samples = line.rpartition(" ")
        frames = stack.split(";")
        if not samples.isdigit() or "MainThread" not in frames[0]:
            continue
        names = {re.sub(r":\d+\)$", ")", frame) for frame in frames[1:] if "buildgraph/" in frame}
        for name in names:
            seconds[name] = seconds.get(name, 0.0) + int(samples) / rate
    ranked = sorted(seconds.items(), key=lambda item: -item[1])
    return [f"  {value:6.2f} s  {name}" for name, value in ranked]


# -- BuildKit: inline cache, pushed images, --cache-from ----------------------------------------
def measure_buildkit(work: Path, seed: Path, repo: Monorepo, host: str) -> Result:
    # No daemon.json entry is needed for HOST: dockerd always treats 127.0.0.0/8 as insecure.
    result = Result()
    archive = work / "busybox-docker.tar"
    logs = work / "logs"
    try:
        export = ["image", "export", "busybox", "-o", f"type=docker,dest={archive}"]
        run([*Buildgraph(seed, seed).command, *export, "--cache-dir", str(seed)])
        with buildkit(work / "bk-a", archive) as machine_a:
            _bk_warm_up(machine_a, work)
            result.export = _timed(
                "BuildKit", "A: cold + push", _bk_push_all, machine_a, repo, host, logs
            )
        if result.export is None:
            result.notes.append("BuildKit: machine A failed (see the log above)")
            return result
        with buildkit(work / "bk-b", archive) as machine_b:
            _bk_warm_up(machine_b, work)
            result.fresh = _timed(
                "BuildKit", "B: --cache-from", _bk_from_cache, machine_b, repo, host, logs
            )
        if result.fresh is not None:
            result.steps_run = sum(
                _bk_steps_run(logs / f"bk-b-{s.name}.log") for s in repo.services
            )
    except PeerError as err:
        note(f"BuildKit left out: {err}")
        result.notes.append(f"BuildKit: {err}".splitlines()[0][:120])
    return result


def _bk_warm_up(peer: BuildKit, work: Path) -> None:
    tree = generate(work / "bk-warm-up", 1, sources=2)
    with contextlib.suppress(PeerError):
        for service in (tree.base, *tree.services):
            _bk_build(peer, service, (), ("-t", f"warm-{service.name}"), work / "logs" / "w.log")
        peer.docker("image", "rm", "-f", "warm-base", "warm-svc00")
        peer.docker("builder", "prune", "-af")


def _bk_build(
    peer: BuildKit, service: Service, extra: tuple[str, ...], tags: tuple[str, ...], log: Path
) -> None:
    """`docker build` of SERVICE; `FROM base` in a service finds the image tagged `base`."""
    options = (
        "--network",
        "none",
        "--progress",
        "plain",
        "-f",
        str(service.dockerfile),
        *extra,
        *tags,
    )
    peer.docker("build", *options, str(service.context), log=log)


def _bk_push_all(peer: BuildKit, repo: Monorepo, host: str, logs: Path) -> None:
    inline = ("--build-arg", "BUILDKIT_INLINE_CACHE=1")
    for service in (repo.base, *repo.services):
        ref = f"{host}/bk/{service.name}"
        log = logs / f"bk-a-{service.name}.log"
        _bk_build(peer, service, inline, ("-t", service.name, "-t", ref), log)
        peer.docker("push", ref, log=log)


def _bk_from_cache(peer: BuildKit, repo: Monorepo, host: str, logs: Path) -> None:
    """Pull base rather than rebuild it: a rebuild from its inline cache gets a new image id
    (fresh timestamps in its config), and then every service's cache misses from `FROM base` on.
    The inline cache (mode=min) of a service's final image is enough to skip its build stage."""
    base = f"{host}/bk/{repo.base.name}"
    peer.docker("pull", base, log=logs / "bk-b-base.log")
    peer.docker("tag", base, repo.base.name, log=logs / "bk-b-base.log")
    for service in repo.services:
        ref = f"{host}/bk/{service.name}"
        log = logs / f"bk-b-{service.name}.log"
        _bk_build(peer, service, ("--cache-from", ref), ("-t", service.name), log)


def _bk_steps_run(log: Path) -> int:
    """RUN/COPY vertices of a plain-progress log that did not end CACHED."""
    text = log.read_text(errors="replace")
    names = dict(re.findall(r"^#(\d+) \[[^\]]*\] ((?:RUN|COPY) .*)$", text, re.MULTILINE))
    cached = set(re.findall(r"^#(\d+) CACHED$", text, re.MULTILINE))
    return len(set(names) - cached)


# -- buildah: --layers --cache-to / --cache-from ------------------------------------------------
def measure_buildah(work: Path, seed: Path, repo: Monorepo, host: str) -> Result:
    result = Result()
    cache = f"{host}/bh/cache"
    try:
        result.export, _ = _bh_machine(work, seed, repo, "a", ("--cache-to", cache), result)
        if result.export is None:
            result.notes.append("buildah: machine A failed (see the log above)")
            return result
        result.fresh, logs = _bh_machine(work, seed, repo, "b", ("--cache-from", cache), result)
        if result.fresh is not None:
            result.steps_run = sum(
                _bh_steps_run(Path(f"{logs}-{s.name}.log")) for s in (repo.base, *repo.services)
            )
    except PeerError as err:
        note(f"buildah left out: {err}")
        result.notes.append(f"buildah: {err}".splitlines()[0][:120])
    return result


def _bh_machine(
    work: Path, seed: Path, repo: Monorepo, machine: str, cache: tuple[str, ...], result: Result
) -> tuple[float | None, Path]:
    """Time the CI script on a fresh buildah store; once more on another fresh store when it
    fails, since buildah 1.28's chroot RUN now and then fails on its own ("sealing memfd copy")."""
    seconds, logs = None, work / "logs" / f"bh-{machine}"
    for attempt in range(2):
        logs = work / "logs" / f"bh-{machine}{'-retry' * attempt}"
        with buildah(work / logs.name, seed) as peer:
            peer.reset()
            what = f"{machine.upper()}: {cache[0]}{' (retry)' * attempt}"
            seconds = _timed("buildah", what, _bh_build_all, peer, repo, cache, logs)
            peer.remove()
        if seconds is not None:
            if attempt:
                result.notes.append(f"buildah: machine {machine.upper()} timed on its 2nd try")
            break
    return seconds, logs


def _bh_build_all(peer, repo: Monorepo, cache: tuple[str, ...], logs: Path) -> None:
    for service in (repo.base, *repo.services):
        options = ("--layers", "--isolation", "chroot", "--tls-verify=false", *cache)
        log = Path(f"{logs}-{service.name}.log")
        dockerfile, context = str(service.dockerfile), str(service.context)
        peer.buildah("bud", *options, "-f", dockerfile, "-t", service.name, context, log=log)


def _bh_steps_run(log: Path) -> int:
    """RUN/COPY steps of a `buildah bud` log not followed by "Using cache"."""
    ran, current = 0, None
    for line in log.read_text(errors="replace").splitlines():
        if re.search(r"STEP \d+/\d+: ", line):
            if current:
                ran += 1
            current = re.search(r"STEP \d+/\d+: (RUN|COPY) ", line) is not None
        elif "Using cache" in line or line.startswith("--> Using cache"):
            current = False
    return ran + (1 if current else 0)


# -- the report -------------------------------------------------------------------------------
def print_report(command: str, options: argparse.Namespace, results: dict[str, Result]) -> None:
    ours = results.get("buildgraph", Result())
    bk = results.get("buildkit", Result())
    bh = results.get("buildah", Result())
    print(f"command: {command}")
    print(f"machine: {machine_summary()}; wall-clock seconds; buildgraph: best of {options.repeat}")
    print(f"versions: {tool_versions()}")
    print()
    header = (
        f"{'scenario':<34} {'N':>3} {'buildgraph':>10} {'BuildKit':>9} {'buildah':>9}  "
        f"{'steps run (bg/bk/bh)':<20}  note"
    )
    print(header)
    print("-" * len(header))
    n = options.services
    rows = [
        ("cold, no export", (ours.cold, None, None), "", "store: busybox only"),
        (
            "A: cold + cache export",
            (ours.export, bk.export, bh.export),
            "",
            "bg --cache-to; bk inline cache + push; bh --cache-to",
        ),
        (
            "B: fresh machine, remote cache",
            (ours.fresh, bk.fresh, bh.fresh),
            "/".join(_cell(r.steps_run) for r in (ours, bk, bh)),
            "store: busybox only; --cache-from",
        ),
        ("B again: every step local", (ours.again, None, None), "", "what any run costs"),
        (
            "export alone, after the cold build",
            (ours.export_alone, None, None),
            "",
            "bg warm --build: every step exported, none built",
        ),
        (
            "A, cache.mode min",
            (ours.export_min, None, None),
            "",
            "bg --cache-to, entries for the images' layers",
        ),
        (
            "B from the mode-min cache",
            (ours.fresh_min, None, None),
            _cell(ours.steps_run_min),
            "store: busybox only; --cache-from",
        ),
    ]
    for name, seconds, steps, text in rows:
        cells = [_seconds(value) for value in seconds]
        print(f"{name:<34} {n:>3} {cells[0]:>10} {cells[1]:>9} {cells[2]:>9}  {steps:<20}  {text}")
    print()
    header = f"{'target':<44} {'value':>14} {'bound':>10}  met"
    print(header)
    print("-" * len(header))
    targets = [
        ("B: buildgraph / BuildKit", _ratio(ours.fresh, bk.fresh), FRESH_VS_BUILDKIT),
        ("B: buildgraph / buildgraph cold", _ratio(ours.fresh, ours.cold), FRESH_VS_COLD),
        ("A: cold + export / cold, no export", _ratio(ours.export, ours.cold), EXPORT_VS_NO_EXPORT),
        (
            "A, cache.mode min / cold, no export",
            _ratio(ours.export_min, ours.cold),
            EXPORT_VS_NO_EXPORT,
        ),
    ]
    for name, value, bound in targets:
        met = "-" if value is None else "yes" if value <= bound else "NO"
        print(f"{name:<44} {ratio(value):>14} {f'<= {bound:g}x':>10}  {met}")
    steps_met = "-" if ours.steps_run is None else "yes" if ours.steps_run == 0 else "NO"
    print(f"{'B: buildgraph steps run':<44} {_cell(ours.steps_run):>14} {'0':>10}  {steps_met}")
    if ours.steps_run_min is not None:
        met = "yes" if ours.steps_run_min == 0 else "NO"
        name = "B from the mode-min cache: steps run"
        print(f"{name:<44} {ours.steps_run_min:>14} {'0':>10}  {met}")
    equal = None if ours.downloaded is None else ours.downloaded == ours.needed
    print(
        f"{'B: bytes downloaded / layers the outputs need':<44} "
        f"{_cell(ours.downloaded):>14} {_cell(ours.needed):>10}  "
        f"{'-' if equal is None else 'yes' if equal else 'NO'}"
    )
    beyond = _beyond(ours)
    if beyond is not None:  # for reference, not one of the targets
        print(f"{'(B - B again) / (cold - B again), reference':<44} {ratio(beyond):>14}")
    print_cpu(ours)
    for result in results.values():
        for text in result.notes:
            print(f"note: {text}")


def _beyond(ours: Result) -> float | None:
    """B against the cold build, each without what any run costs (a run with every step in
    the local store): the share of the cold build's own work that B still does."""
    if ours.fresh is None or ours.cold is None or ours.again is None:
        return None
    return _ratio(ours.fresh - ours.again, ours.cold - ours.again)


def print_cpu(ours: Result) -> None:
    """What the buildgraph runs cost in CPU, ours and the registry's, and the least wall time
    that much CPU allows on this machine's cores."""
    if not ours.cpu:
        return
    cores = os.cpu_count() or 1
    cold = ours.cpu.get("cold")
    print()
    header = (
        f"{'CPU seconds (best runs)':<34} {'wall':>6} {'ours':>6} {'registry':>9}  "
        f"{'(ours+registry)/' + str(cores) + ' cores':>24}"
    )
    print(header)
    print("-" * len(header))
    names = {
        "cold": "cold, no export",
        "export": "A: cold + export",
        "export_alone": "export alone, after the cold build",
        "export_min": "A, cache.mode min",
        "fresh": "B: fresh machine",
    }
    for scenario, name in names.items():
        cpu = ours.cpu.get(scenario)
        if cpu is None:
            continue
        floor = (cpu.ours + cpu.registry) / cores
        versus = f" = {floor / cold.wall:.2f}x cold" if cold else ""
        print(
            f"{name:<34} {cpu.wall:6.2f} {cpu.ours:6.2f} {cpu.registry:9.2f}  "
            f"{f'{floor:.2f} s{versus}':>24}"
        )


def _timed(engine: str, what: str, action: Callable[..., None], *args: object) -> float | None:
    subprocess.run(["sync"], check=False)  # the last build's dirty pages stay out of this one
    started = time.perf_counter()
    try:
        action(*args)
    except PeerError as err:
        note(f"{engine} {what} failed: {err}")
        return None
    seconds = time.perf_counter() - started
    note(f"{engine:<10} {what:<28} {seconds:8.2f} s")
    return seconds


def _least(best: float | None, seconds: float | None) -> float | None:
    if seconds is None:
        return best
    return seconds if best is None else min(best, seconds)


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or not theirs else ours / theirs


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)


if __name__ == "__main__":
    main()
