"""`plan` and `warm` for tasks: each task's key and action, without running anything."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from buildgraph.cache.local import LocalStore
from buildgraph.commands.tasks import task_store
from buildgraph.errors import BuildgraphError
from buildgraph.frontend.tasks import TaskSpec
from buildgraph.graph.task_keys import explain, task_key
from buildgraph.solver.events import StepState
from buildgraph.worker.task_schedule import TaskOutcome, input_digests, input_files, task_inputs

if TYPE_CHECKING:
    from buildgraph.cache.task_remote import RemoteTaskCache
    from buildgraph.frontend.buildfile import Project
    from buildgraph.registry.client import RegistryClient


@dataclass(frozen=True, slots=True)
class PlannedTask:
    name: str
    key: str  # "" when it cannot be known before a dependency runs
    action: str  # "replay local" | "replay remote" | "run"
    reason: str = ""


def plan_tasks(
    tasks: Mapping[str, TaskSpec],
    image_keys: Mapping[str, str],
    *,
    store: LocalStore,
    remote: RemoteTaskCache | None,
    warn: Callable[[str], None] = lambda _: None,
    download: bool = False,
) -> list[PlannedTask]:
    """What `run` would do with each task, and why, without running anything; with
    `download` (warm), the results the remote cache has are fetched into the local one
    (action "downloaded"). A task below one whose outputs are not here cannot have its key
    known: it says so."""
    entries = task_store(store)
    known: dict[str, TaskOutcome] = {}
    planned: dict[str, PlannedTask] = {}
    for name in _dependencies_first(tasks):
        task = tasks[name]
        unknown = [d for d in task.depends_on if d not in known]
        if unknown:
            why = f"after task {unknown[0]}: its outputs are not in the local cache yet"
            planned[name] = PlannedTask(name, "", "run", why)
            continue
        digests = input_digests(input_files(task, warn))
        inputs = task_inputs(task, image_keys[task.image_name], digests, known)
        key = task_key(inputs)
        found = entries.get(key, touch=False)
        if found is not None:
            known[name] = TaskOutcome(name, key, StepState.CACHED, found)
            planned[name] = PlannedTask(name, key, "replay local")
        elif download and remote is not None and (fetched := _fetch(remote, key, entries, warn)):
            known[name] = TaskOutcome(name, key, StepState.REMOTE, fetched)
            planned[name] = PlannedTask(name, key, "downloaded")
        elif remote is not None and not download and remote.has(key):
            planned[name] = PlannedTask(name, key, "replay remote")
        else:
            planned[name] = PlannedTask(name, key, "run", explain(inputs, entries.last(name)))
    return [planned[name] for name in sorted(planned)]


def render_task_plan(planned: Sequence[PlannedTask]) -> str:
    lines = ["tasks:"]
    for task in planned:
        why = f"  ({task.reason})" if task.reason else ""
        lines.append(f"  {task.key[:12] or '?':12}  {task.action:13}  task {task.name}{why}")
    runs = sum(1 for task in planned if task.action == "run")
    lines.append(f"{len(planned)} tasks: {len(planned) - runs} to replay, {runs} to run")
    return "\n".join(lines)


def _dependencies_first(tasks: Mapping[str, TaskSpec]) -> list[str]:
    order: list[str] = []
    placed: set[str] = set()
    while len(order) < len(tasks):
        for name in sorted(tasks):
            if name not in placed and set(tasks[name].depends_on) <= placed:
                order.append(name)
                placed.add(name)
    return order


def _fetch(remote: RemoteTaskCache, key: str, entries, warn: Callable[[str], None]):
    try:
        return remote.fetch(key, entries)
    except BuildgraphError as err:  # warm is best effort: the run fetches or runs it later
        warn(f"remote task cache: {err}")
        return None


def warm_tasks(
    tasks: Mapping[str, TaskSpec],
    image_keys: Mapping[str, str],
    *,
    store: LocalStore,
    remote: RemoteTaskCache | None,
    warn: Callable[[str], None] = lambda _: None,
) -> str:
    """`warm`: fetch the tasks' results the remote cache holds; one line saying how many."""
    if remote is None:
        return f"tasks: no remote cache; {len(tasks)} tasks not warmed"
    planned = plan_tasks(tasks, image_keys, store=store, remote=remote, warn=warn, download=True)
    fetched = sum(1 for task in planned if task.action == "downloaded")
    here = sum(1 for task in planned if task.action == "replay local")
    missing = len(planned) - fetched - here
    return f"tasks: {fetched} downloaded, {here} already here, {missing} not in the remote cache"


def warm_project_tasks(
    project: Project,
    names: Sequence[str],
    tasks: Mapping[str, TaskSpec],
    *,
    store: LocalStore,
    client: Callable[[], RegistryClient],
    cache_from: str | None,
    warn: Callable[[str], None] = lambda _: None,
) -> str:
    """`warm` for tasks: their keys (from the compiled images; nothing built), then fetch."""
    from buildgraph.commands.compile import compile_project
    from buildgraph.commands.tasks import remote_tasks

    compiled = compile_project(project, names, store=store, client=client)
    image_keys = {name: plan.target.key for name, plan in compiled.plans.items()}
    remote = remote_tasks(project, client, cache_from=cache_from, cache_to="", warn=warn)
    return warm_tasks(tasks, image_keys, store=store, remote=remote, warn=warn)


def graph_with_tasks(
    rendered: str, fmt: str, tasks: Mapping[str, TaskSpec], image_keys: Mapping[str, str]
) -> str:
    """`graph`'s output with a node per task (`task:NAME`), an edge from its image's last
    step and one from each task it depends on."""
    if not tasks:
        return rendered
    order = _dependencies_first(tasks)
    edges = [
        (source, f"task:{name}")
        for name in order
        for source in (
            image_keys[tasks[name].image_name],
            *(f"task:{d}" for d in tasks[name].depends_on),
        )
    ]
    if fmt == "json":
        doc = json.loads(rendered)
        doc["nodes"] += [{"key": f"task:{n}", "title": f"task {n}", "task": n} for n in order]
        doc["edges"] += [list(edge) for edge in edges]
        return json.dumps(doc, indent=2)
    if fmt == "dot":
        lines = rendered.splitlines()[:-1]  # the closing brace comes back last
        lines += [f'  "task:{n}" [label="task {n}",shape=ellipse];' for n in order]
        lines += [f'  "{_short(a)}" -> "{_short(b)}";' for a, b in edges]
        return "\n".join([*lines, "}"])
    lines = rendered.splitlines()
    for name in order:
        inputs = ", ".join(_short(a) for a, b in edges if b == f"task:{name}")
        lines.append(f"task:{name}  task {name}  <- {inputs}")
    return "\n".join(lines)


def _short(node: str) -> str:
    return node if node.startswith("task:") else node[:12]
