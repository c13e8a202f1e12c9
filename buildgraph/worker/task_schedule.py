"""The task phase: a ready-set loop over the task DAG; each task replayed from a cache or run.

A task is ready when every task it depends on has finished; up to `jobs` run at once. Its key
needs its dependencies' outputs, so keys are made here, as tasks become ready, not before. A
cached task does not run: its log is replayed into the progress output (its title marked
cached) and its outputs are restored. A failed task is not cached (its next run runs it again,
as a flaky test should be), and the tasks that depend on it are skipped.
"""

from __future__ import annotations

import glob
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from buildgraph.cache.steps import StepRecord
from buildgraph.cache.task_store import TaskResult, TaskStore, file_digest, restore_outputs
from buildgraph.errors import BuildgraphError, StepFailed
from buildgraph.frontend.tasks import TaskSpec
from buildgraph.graph.task_keys import TaskInputs, files_digest, key_fields, task_key
from buildgraph.solver.events import EventSink, LogEvent, StepEvent, StepState
from buildgraph.worker.task_run import Sandbox, TaskRun, run_task

TAIL_LINES = 10  # of a failed task's log, in its error


class RemoteTasks(Protocol):  # cache/task_remote.py
    def fetch(self, key: str, store: TaskStore) -> TaskResult | None: ...
    def push(self, result: TaskResult) -> None: ...


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    name: str
    key: str  # "" when it never got one (skipped)
    state: StepState  # CACHED, REMOTE (replayed), DONE (ran), FAILED, SKIPPED
    result: TaskResult | None  # None unless it succeeded
    error: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class TaskPhase:
    """What the task phase works with; side effects come in here."""

    tasks: Mapping[str, TaskSpec]  # the tasks to run (and every task they depend on)
    # TaskSpec.image_name -> (last key, record) of each image that was built; the tasks in
    # an image that is not here are skipped
    images: Mapping[str, tuple[str, StepRecord]]
    store: TaskStore
    sandbox: Callable[[], Sandbox]  # called when a task has to run (probes the isolation)
    scratch: Callable[[], object]  # a context manager: an empty held dir on the cache's fs
    sink: EventSink
    remote: RemoteTasks | None = None
    warn: Callable[[str], None] = lambda _: None
    no_cache: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)  # set: stop the commands


def input_files(task: TaskSpec, warn: Callable[[str], None]) -> dict[str, Path]:
    """The files a task's input globs select (a dir: every file below it), by relative path."""
    found: dict[str, Path] = {}
    for item in task.inputs:
        matches = glob.glob(item.pattern, root_dir=task.base, recursive=True, include_hidden=True)
        if not matches:
            warn(f"{item.where}: task {task.name}: input {item.pattern!r} matches no file")
        for match in matches:
            path = task.base / match
            if path.is_dir():
                for directory, _dirs, names in os.walk(path):
                    for name in names:
                        file = Path(directory) / name
                        found[str(file.relative_to(task.base))] = file
            elif path.is_file():
                found[os.path.normpath(match)] = path
    return dict(sorted(found.items()))


def input_digests(files: Mapping[str, Path]) -> tuple[tuple[str, str], ...]:
    """(path, content digest + whether it is executable): never mtimes, as for COPY."""
    return tuple(
        (name, file_digest(path) + (":x" if os.access(path, os.X_OK) else ":-"))
        for name, path in files.items()
    )


def task_inputs(
    task: TaskSpec,
    image_key: str,
    digests: tuple[tuple[str, str], ...],
    done: Mapping[str, TaskOutcome],
) -> TaskInputs:
    depends = []
    for name in task.depends_on:
        result = done[name].result
        assert result is not None
        depends.append((name, files_digest(result.files)))
    return TaskInputs(
        image=image_key,
        argv=task.argv,
        env=task.env,
        workdir=task.workdir,
        user=task.user,
        network=task.network,
        inputs=digests,
        outputs=task.outputs,
        depends=tuple(depends),
    )


def run_phase(phase: TaskPhase, jobs: int) -> dict[str, TaskOutcome]:
    """Every task of the phase, dependencies first, up to `jobs` at once."""
    waiting = {name: set(spec.depends_on) for name, spec in phase.tasks.items()}
    done: dict[str, TaskOutcome] = {}
    running: dict[Future[TaskOutcome], str] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="task") as pool:
        try:
            _loop(phase, jobs, pool, waiting, done, running)
        except BaseException:  # Ctrl-C, SIGTERM: the running commands stop, then the pool exits
            phase.cancel.set()
            raise
    return done


def _loop(
    phase: TaskPhase,
    jobs: int,
    pool: ThreadPoolExecutor,
    waiting: dict[str, set[str]],
    done: dict[str, TaskOutcome],
    running: dict[Future[TaskOutcome], str],
) -> None:
    while waiting or running:
        for name in sorted(waiting):
            if waiting[name] - done.keys() or len(running) >= max(1, jobs):
                continue
            del waiting[name]
            reason = _why_not_run(phase, phase.tasks[name], done)
            if reason:
                done[name] = TaskOutcome(name, "", StepState.SKIPPED, None, reason)
                event = StepEvent(f"task:{name}", StepState.SKIPPED, f"task {name}", reason)
                phase.sink.emit(event)
                continue
            running[pool.submit(perform, phase, phase.tasks[name], dict(done))] = name
        if not running:
            # Everything left waits on a task not in the phase: wanted_tasks adds every
            # dependency, and the frontend refuses cycles, so this is a bug, not bad input.
            assert not waiting, f"tasks wait on nothing that can finish: {sorted(waiting)}"
            continue
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            name = running.pop(future)
            done[name] = future.result()


def _why_not_run(phase: TaskPhase, task: TaskSpec, done: Mapping[str, TaskOutcome]) -> str:
    """Why `task` cannot run ("" when it can): its image was not built (`run --keep-going`
    after an image failed), or a task it depends on failed or was skipped."""
    if task.image_name not in phase.images:
        return f"its image {task.image_name} was not built"
    for name in task.depends_on:
        if done[name].result is None:
            what = "failed" if done[name].state is StepState.FAILED else "was skipped"
            return f"task {name} it depends on {what}"
    return ""


def perform(phase: TaskPhase, task: TaskSpec, done: Mapping[str, TaskOutcome]) -> TaskOutcome:
    """One task: its key, then a replay from the local or remote cache, or a run."""
    title = f"task {task.name}"
    image_key, image = phase.images[task.image_name]
    files = input_files(task, phase.warn)
    inputs = task_inputs(task, image_key, input_digests(files), done)
    key = task_key(inputs)
    event_key = f"task:{task.name}"
    if not phase.no_cache:
        found = phase.store.get(key)
        state, reason = StepState.CACHED, "replayed from the local cache"
        if found is None and phase.remote is not None:
            try:
                found = phase.remote.fetch(key, phase.store)
            except BuildgraphError as err:  # a cache that fails costs a run, not the build
                phase.warn(f"task {task.name}: remote cache: {err}")
            state, reason = StepState.REMOTE, "replayed from the remote cache"
        if found is not None:
            phase.sink.emit(StepEvent(event_key, state, title, reason))
            if found.log:
                phase.sink.emit(LogEvent(f"{title} (cached)", found.log, replayed=True))
            restore_outputs(found, task.output_dir)
            phase.store.remember(task.name, key_fields(inputs))
            return TaskOutcome(task.name, key, state, found)
    phase.sink.emit(StepEvent(event_key, StepState.RUNNING, title))
    started = time.monotonic()
    try:
        with phase.scratch() as scratch:  # type: ignore[attr-defined]
            scratch = Path(scratch)
            sources = _stage(files, scratch / "src")
            dependencies = {name: done[name].result.outputs_dir for name in task.depends_on}  # type: ignore[union-attr]
            collected = scratch / "collected"
            run = run_task(
                task,
                image,
                phase.sandbox(),
                sources=sources,
                dependencies=dependencies,
                scratch=_fresh(scratch / "run"),
                collected=collected,
                output=lambda data: phase.sink.emit(LogEvent(title, data)),
                cancel=phase.cancel,
            )
            error = _failure(task, run)
            if error:
                _keep_partial(collected, task.output_dir)  # what it wrote helps find why
                raise StepFailed(error, task.where)
            result = phase.store.put(key, run.exit_code, run.seconds, run.log, collected)
    except BuildgraphError as err:
        seconds = time.monotonic() - started
        phase.sink.emit(StepEvent(event_key, StepState.FAILED, title, str(err.args[0]), seconds))
        return TaskOutcome(task.name, key, StepState.FAILED, None, str(err), seconds)
    restore_outputs(result, task.output_dir)
    phase.store.remember(task.name, key_fields(inputs))
    if phase.remote is not None:
        try:
            phase.remote.push(result)
        except BuildgraphError as err:  # the result is here and good: a warning, not a failure
            phase.warn(f"task {task.name}: not exported to the remote cache: {err}")
    seconds = time.monotonic() - started
    phase.sink.emit(StepEvent(event_key, StepState.DONE, title, duration_s=seconds))
    return TaskOutcome(task.name, key, StepState.DONE, result, "", seconds)


def _failure(task: TaskSpec, run: TaskRun) -> str:
    tail = run.log.decode(errors="replace").strip().splitlines()[-TAIL_LINES:]
    detail = (": " + " | ".join(tail)) if tail else ""
    if run.exit_code != 0:
        return f"task {task.name}: command exited with code {run.exit_code}{detail}"
    if run.missing:
        listed = ", ".join(f"/out/{path}" for path in run.missing)
        return f"task {task.name}: declared output {listed} was not produced by the command"
    return ""


def _stage(files: Mapping[str, Path], destination: Path) -> Path:
    """A copy of the input files at their relative paths: what the sandbox binds read-only,
    so the command sees its declared inputs and no other file of the repository."""
    destination.mkdir()
    for name, path in files.items():
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return destination


def _fresh(path: Path) -> Path:
    path.mkdir()
    return path


def _keep_partial(collected: Path, output_dir: Path) -> None:
    if collected.is_dir():
        shutil.rmtree(output_dir, ignore_errors=True)
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(collected, output_dir)
