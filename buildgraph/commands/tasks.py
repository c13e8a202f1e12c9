"""Tasks in the commands: which tasks a command names, the images they need, the task phase.

`buildgraph run NAME...` builds the images its tasks need through the ordinary target
pipeline (a task in a `target:stage` image adds a hidden target for that stage, which has no
tags, outputs nor push), then runs the task phase (worker/task_schedule.py). The other commands call
the functions here with a line or two each, so that they stay thin.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from buildgraph.cache.local import LocalStore
from buildgraph.cache.steps import StepRecord
from buildgraph.cache.task_store import TaskStore
from buildgraph.errors import InputError, StepFailed
from buildgraph.frontend.buildfile import Project
from buildgraph.frontend.dockerfile import parse_dockerfile
from buildgraph.frontend.tasks import TaskSpec
from buildgraph.solver.events import EventSink, LogEvent, StepEvent, StepState
from buildgraph.worker.snapshot import WORK_DIR, SnapshotStore
from buildgraph.worker.task_run import Sandbox
from buildgraph.worker.task_schedule import RemoteTasks, TaskOutcome, TaskPhase, run_phase

if TYPE_CHECKING:
    from buildgraph.cache.task_remote import RemoteTaskCache
    from buildgraph.commands.run import RunResult
    from buildgraph.registry.client import RegistryClient

TASKS_DIR = "tasks"  # in the cache dir


def wanted_tasks(project: Project, names: Sequence[str]) -> dict[str, TaskSpec]:
    """The tasks `names` asks for (directly or through groups; none: the group `default`),
    plus every task they depend on."""
    tasks = dict(project.tasks)
    groups = dict(project.groups)
    if not tasks:
        return {}
    pending = list(names or (["default"] if "default" in groups else []))
    seen: set[str] = set()
    wanted: dict[str, TaskSpec] = {}
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in groups:
            pending.extend(groups[name])
        elif name in tasks:
            wanted[name] = tasks[name]
            pending.extend(tasks[name].depends_on)
    return dict(sorted(wanted.items()))


def with_task_images(
    project: Project, names: Sequence[str], tasks: Mapping[str, TaskSpec]
) -> tuple[Project, list[str]]:
    """The project with a hidden target per `target:stage` image of `tasks`, and the names
    for the target pipeline: `names` without tasks, plus every image the tasks run in."""
    if not tasks:
        return project, list(names)
    targets = dict(project.targets)
    for task in tasks.values():
        if task.stage is None or task.image_name in targets:
            continue
        spec = targets[task.image]
        _check_stage(task, spec.dockerfile)
        targets[task.image_name] = dataclasses.replace(
            spec, name=task.image_name, target=task.stage, tags=(), outputs=(), push=False
        )
    staged = dataclasses.replace(project, targets=tuple(sorted(targets.items())))
    # Tasks come from the names or, with none, from the group `default` (wanted_tasks).
    kept = [name for name in (names or ["default"]) if name not in tasks]
    images = sorted({task.image_name for task in tasks.values()})
    return staged, [*kept, *(image for image in images if image not in kept)]


def _check_stage(task: TaskSpec, dockerfile: Path) -> None:
    if not dockerfile.is_file():
        return  # the target pipeline says so, with the target's line
    stages = parse_dockerfile(dockerfile).stages
    names = [stage.name for stage in stages if stage.name]
    stage = task.stage or ""
    if stage in names or (stage.isdigit() and int(stage) < len(stages)):
        return
    raise InputError(
        f"task {task.name}: image {task.image_name!r}: no stage {task.stage!r} in {dockerfile} "
        f"(stages: {', '.join(names) or 'none named'})",
        task.where,
    )


def task_store(store: LocalStore) -> TaskStore:
    return TaskStore(store.root / TASKS_DIR)


def run_task_phase(
    tasks: Mapping[str, TaskSpec],
    images: Mapping[str, tuple[str, StepRecord | None]],
    *,
    store: LocalStore,
    sink: EventSink,
    jobs: int,
    isolation: str = "auto",
    remote: RemoteTasks | None = None,
    no_cache: bool = False,
    fetch_layers: Callable[[StepRecord], None] | None = None,
    warn: Callable[[str], None] = lambda _: None,
) -> dict[str, TaskOutcome]:
    """Run (or replay) `tasks` in their images (image name -> last key and record, None when
    it was not built: its tasks are skipped, and reported so)."""
    if not tasks:
        return {}
    from buildgraph.worker.execute import Worker
    from buildgraph.worker.isolation import choose
    from buildgraph.worker.rootfs import RootPool

    snapshots = SnapshotStore(store.root / "snapshots")
    built = {name: (key, record) for name, (key, record) in images.items() if record is not None}
    worker = Worker(store=store, snapshots=snapshots, fetch_layers=fetch_layers)
    with contextlib.ExitStack() as stack:
        lock = threading.Lock()
        chosen: list[Sandbox] = []

        def sandbox() -> Sandbox:
            """Probed when the first task has to run: a phase of replays never probes."""
            with lock:
                if not chosen:
                    isolation_used = choose(isolation)[0]
                    roots = None
                    if isolation_used == "chroot":
                        roots = stack.enter_context(contextlib.closing(
                            RootPool(snapshots.root / WORK_DIR, store)))  # fmt: skip
                    chosen.append(Sandbox(isolation_used, worker.lowers, roots, fetch_layers))
                return chosen[0]

        phase = TaskPhase(
            tasks=tasks,
            images=built,
            store=task_store(store),
            sandbox=sandbox,
            scratch=lambda: snapshots.scratch("task-"),
            sink=_Serialized(sink),
            remote=remote,
            warn=warn,
            no_cache=no_cache,
        )
        return run_phase(phase, jobs)


class _Serialized:
    """A sink that tasks on several threads can share: one event at a time, so that a
    renderer's lines never interleave (the step scheduler emits from one thread only)."""

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink
        self._lock = threading.Lock()

    def emit(self, event: StepEvent | LogEvent) -> None:
        with self._lock:
            self._sink.emit(event)


def image_records(
    tasks: Mapping[str, TaskSpec], finals: Mapping[str, str], records: Mapping[str, StepRecord]
) -> dict[str, tuple[str, StepRecord | None]]:
    """Image name -> (its last step key, its record if it was built) for the tasks' images;
    `finals`: target name -> last step key (RunResult.targets)."""
    images = {}
    for task in tasks.values():
        key = finals[task.image_name]
        images[task.image_name] = (key, records.get(key))
    return images


def raise_for_task_failures(outcomes: Mapping[str, TaskOutcome]) -> None:
    failed = [outcome for outcome in outcomes.values() if outcome.state is StepState.FAILED]
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise StepFailed(failed[0].error + more)


def task_summary(outcomes: Mapping[str, TaskOutcome]) -> str:
    """One line per task for the end of `run`: name, what happened, seconds."""
    words = {
        StepState.CACHED: "replayed (local cache)",
        StepState.REMOTE: "replayed (remote cache)",
        StepState.DONE: "ran",
        StepState.FAILED: "FAILED",
        StepState.SKIPPED: "skipped",
    }
    lines = []
    for name, outcome in sorted(outcomes.items()):
        seconds = f"{outcome.seconds:6.2f}s" if outcome.state is StepState.DONE else "       "
        why = f" ({outcome.error})" if outcome.state is StepState.SKIPPED else ""
        lines.append(f"task {name:<24} {words[outcome.state]:<24} {seconds}{why}".rstrip())
    return "\n".join(lines)


def remote_tasks(
    project: Project,
    client: Callable[[], RegistryClient],
    *,
    cache_from: str | None,
    cache_to: str | None,
    warn: Callable[[str], None],
) -> RemoteTaskCache | None:
    """The remote task cache: the step cache's repository (or --cache-from / --cache-to)."""
    from buildgraph.cache.task_remote import RemoteTaskCache
    from buildgraph.registry.reference import parse_reference

    source = cache_from if cache_from is not None else project.cache.remote
    target = cache_to if cache_to is not None else project.cache.remote
    if not source:
        return None
    push_to = parse_reference(target) if target else None
    return RemoteTaskCache(client, parse_reference(source), push_to=push_to, warn=warn)


def tasks_after_build(
    project: Project,
    tasks: Mapping[str, TaskSpec],
    result: RunResult,
    *,
    store: LocalStore,
    client: Callable[[], RegistryClient],
    sink: EventSink,
    jobs: int,
    isolation: str,
    no_cache: bool,
    keep_going: bool,
    cache_from: str | None,
    cache_to: str | None,
    warn: Callable[[str], None],
) -> dict[str, TaskOutcome]:
    """`run`'s task phase, once its images are built. When something failed, no task runs;
    with `keep_going`, the tasks whose images were built run, and the others are skipped."""
    if not tasks or (result.outcome.failures and not keep_going):
        return {}
    finals = {target.name: target.key for target in result.targets}
    images = image_records(tasks, finals, result.outcome.records)
    remote = remote_tasks(project, client, cache_from=cache_from, cache_to=cache_to, warn=warn)
    return run_task_phase(
        tasks,
        images,
        store=store,
        sink=sink,
        jobs=jobs,
        isolation=isolation,
        remote=remote,
        no_cache=no_cache,
        warn=warn,
    )
