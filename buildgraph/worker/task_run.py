"""Run one task in the sandbox of its image; copy out its declared outputs, and nothing else.

The command sees the image (its writes go to a scratch upper dir under namespaces, or to a
root of its own that is thrown away under chroot: never to a snapshot, a cached root or a
layer), its inputs read-only at SOURCE_DIR, the outputs of the tasks it depends on read-only at
DEPENDENCY_DIR/NAME, and an empty OUTPUT_DIR. Only the declared paths under OUTPUT_DIR are
copied out, each checked one component at a time with lstat: a symbolic link anywhere on an
output's path is refused (the command chose it, and it could point anywhere on the host), as
is anything but regular files and directories.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from buildgraph.cache.steps import StepRecord
from buildgraph.errors import StepFailed
from buildgraph.frontend.tasks import DEPENDENCY_DIR, OUTPUT_DIR, SOURCE_DIR, TaskSpec
from buildgraph.worker.rootfs import RootPool
from buildgraph.worker.sandbox import Bind, RunResult, RunSpec

MAX_LOG = 8 << 20  # a chatty task keeps its last 8 MiB in the cache


@dataclass(frozen=True, slots=True)
class TaskRun:
    exit_code: int
    log: bytes
    seconds: float
    missing: tuple[str, ...]  # declared outputs the command did not produce


@dataclass(frozen=True, slots=True)
class Sandbox:
    """How to run in an image: the chosen isolation and what it needs."""

    isolation: str  # "namespaces" | "chroot"
    lowers: Callable[[StepRecord], list[Path]]  # namespaces: snapshot dirs, topmost first
    roots: RootPool | None = None  # chroot: materialized roots (each task's is thrown away)
    fetch_layers: Callable[[StepRecord], None] | None = None  # chroot: blobs only remote


def run_task(
    task: TaskSpec,
    image: StepRecord,
    sandbox: Sandbox,
    *,
    sources: Path,
    dependencies: Mapping[str, Path],
    scratch: Path,
    collected: Path,
    output: Callable[[bytes], None] = lambda _: None,
    cancel: threading.Event | None = None,
) -> TaskRun:
    """Run `task` in `image`; its declared outputs end up in `collected` (a new dir, on the
    filesystem of `scratch`, an empty dir of the caller's). A sandbox that cannot start the
    command raises StepFailed; a non-zero exit is a result."""
    log = bytearray()

    def record(data: bytes) -> None:
        log.extend(data)
        if len(log) > 2 * MAX_LOG:
            del log[: len(log) - MAX_LOG]
        output(data)

    binds = [Bind(sources, SOURCE_DIR, readonly=True)]
    binds += [
        Bind(path, f"{DEPENDENCY_DIR}/{name}", readonly=True)
        for name, path in sorted(dependencies.items())
    ]
    spec = RunSpec(task.argv, task.env, task.user, task.workdir, task.network)
    if sandbox.isolation == "chroot":
        result, missing = _in_root(task, spec, binds, image, sandbox, scratch, collected, record,
                                   cancel)  # fmt: skip
    else:
        from buildgraph.worker.sandbox import run_in_sandbox

        out = scratch / "out"
        out.mkdir()
        os.chmod(out, 0o777)  # a task run as another user writes its outputs too
        upper = scratch / "upper"
        upper.mkdir()
        spec = replace(spec, extra_binds=(*binds, Bind(out, OUTPUT_DIR)))
        result = run_in_sandbox(
            spec, sandbox.lowers(image), upper, work=scratch, output=record, cancel=cancel
        )
        missing = collect(out, task.outputs, collected)
    return TaskRun(result.exit_code, bytes(log[-MAX_LOG:]), result.duration_s, missing)


def _in_root(
    task: TaskSpec,
    spec: RunSpec,
    binds: list[Bind],
    image: StepRecord,
    sandbox: Sandbox,
    scratch: Path,
    collected: Path,
    output: Callable[[bytes], None],
    cancel: threading.Event | None,
) -> tuple[RunResult, tuple[str, ...]]:
    """The chroot isolation: a root of the task's own, thrown away after, so what the command
    writes never reaches a root that a step or another task reads. Its binds are copies."""
    from buildgraph.worker.chroot import run_in_root

    if task.network != "host":
        raise StepFailed(
            f"task {task.name}: network: none needs a network namespace, which the chroot "
            "isolation cannot make; write `network: host`, or run where unshare is allowed"
        )
    assert sandbox.roots is not None
    if sandbox.fetch_layers is not None:
        sandbox.fetch_layers(image)
    root = sandbox.roots.take(image)
    try:
        out = root.tree / OUTPUT_DIR.lstrip("/")
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        elif out.exists() or out.is_symlink():
            out.unlink()
        out.mkdir()
        os.chmod(out, 0o777)
        caches = scratch / "caches"  # none: every bind is copied into the root
        caches.mkdir()
        result, _clean = run_in_root(
            replace(spec, extra_binds=tuple(binds)),
            root.tree,
            root.aside,
            cache_root=caches,
            output=output,
            cancel=cancel,
        )
        return result, collect(out, task.outputs, collected)
    finally:
        root.discard()


def collect(out: Path, declared: Sequence[str], collected: Path) -> tuple[str, ...]:
    """Copy the declared paths of `out` into `collected`; the ones missing are returned.
    StepFailed for an output reached through a symbolic link, or that is not a regular file
    or directory (a task's own tree: nothing in it is followed)."""
    collected.mkdir()
    if not stat.S_ISDIR(out.lstat().st_mode):  # chroot: the command may replace /out itself
        raise StepFailed(
            f"the output dir {OUTPUT_DIR} was replaced by a symbolic link or a file: refused"
        )
    missing = []
    for relative in declared:
        source = out
        path_ok = True
        for part in relative.split("/"):
            source = source / part
            try:
                info = source.lstat()
            except FileNotFoundError:
                missing.append(relative)
                path_ok = False
                break
            if stat.S_ISLNK(info.st_mode):
                raise StepFailed(
                    f"output {OUTPUT_DIR}/{relative}: {source.relative_to(out)} is a symbolic "
                    "link; outputs must be files or directories inside the output dir"
                )
        if path_ok:
            _copy(source, collected / relative, f"{OUTPUT_DIR}/{relative}")
    return tuple(missing)


def _copy(source: Path, destination: Path, shown: str) -> None:
    info = source.lstat()
    destination.parent.mkdir(parents=True, exist_ok=True)
    if stat.S_ISREG(info.st_mode):
        shutil.copyfile(source, destination, follow_symlinks=False)
        os.chmod(destination, stat.S_IMODE(info.st_mode) & 0o755 | 0o600)
    elif stat.S_ISDIR(info.st_mode):
        destination.mkdir(exist_ok=True)
        for entry in sorted(os.listdir(source)):
            _copy(source / entry, destination / entry, f"{shown}/{entry}")
    elif stat.S_ISLNK(info.st_mode):
        raise StepFailed(f"output {shown} is a symbolic link; outputs must be files or directories")
    else:
        raise StepFailed(f"output {shown} is not a regular file or directory")
