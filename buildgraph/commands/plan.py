"""`buildgraph plan` and `graph`: what a run would do, and why, without running anything."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from buildgraph.cache.builds import BuildRecords
from buildgraph.cache.local import LocalStore
from buildgraph.cache.steps import StepIndex
from buildgraph.commands.compile import ClientFactory, Compiled, compile_project, project_graph
from buildgraph.commands.export import mount_cache
from buildgraph.frontend.buildfile import Project
from buildgraph.graph.explain import reason, summarize
from buildgraph.graph.model import BuildGraph, Target
from buildgraph.solver.events import StepState
from buildgraph.solver.facts import gather_and_plan
from buildgraph.solver.plan import Action, Plan
from buildgraph.solver.remote import remote_session


@dataclass(frozen=True, slots=True)
class PlannedStep:
    key: str
    title: str
    state: StepState  # CACHED, REMOTE, TO_BUILD or NOT_NEEDED
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TargetPlan:
    name: str
    steps: tuple[PlannedStep, ...]  # every step the target needs, inputs first
    # False: its only use is a push that mounts its layers from the remote cache's registry,
    # so a remote hit of its last step is not downloaded (Plan.files_here)
    files_here: bool = True


def plan_project(
    project: Project,
    names: Sequence[str],
    *,
    store: LocalStore,
    client: ClientFactory,
    cache_from: str | None = None,
    push_all: bool = False,
    warn: Callable[[str], None] = lambda _: None,
) -> tuple[tuple[TargetPlan, ...], BuildGraph]:
    """The plan `run` would carry out, step by step, with the reason each step is built."""
    compiled = compile_project(project, names, store=store, client=client)
    remote = remote_session(
        store,
        client,
        source=cache_from if cache_from is not None else project.cache.remote,
        target=None,
        warn=warn,
        required=False,
        export_only=None,
    )
    graph = project_graph(compiled)
    graph = graph.with_targets(  # as `run` marks them: where a push can mount from the cache
        Target(t.name, t.key, mount_cache(project.target(t.name), push_all, remote) is not None)
        for t in graph.targets
    )
    index = StepIndex(store.root / "steps")
    planned, _ = gather_and_plan(graph, index=index, store=store, remote=remote, no_cache=False)
    records = BuildRecords(store.root / "targets")
    targets = tuple(_target_plan(planned, target, records, compiled) for target in graph.targets)
    return targets, graph


def _target_plan(
    planned: Plan, target: Target, records: BuildRecords, compiled: Compiled
) -> TargetPlan:
    """Every step the target needs (the stages it copies from included), with the plan's
    action; a step to build on the target's own line names what changed since its last build."""
    graph = planned.graph
    chain = graph.chain(target.key)
    before = records.load(target.name) or []
    steps = []
    for key in graph.needed_by(target.key):
        step = planned.steps[key]
        why = step.reason if step.action is not Action.USE_LOCAL else ""
        if step.action is Action.BUILD and not step.unusable and key in chain:
            position = chain.index(key)
            earlier = before[position] if position < len(before) else None
            now = summarize(graph.steps[key], compiled.ignores, compiled.stat_cache)
            parent_changed = position > 0 and planned.action(chain[position - 1]) is Action.BUILD
            why = reason(now, earlier, parent_changed)
        elif step.action in (Action.FETCH, Action.USE_REMOTE):
            why = ""
        steps.append(PlannedStep(key, _title(graph.steps[key]), step.action.state, why))
    return TargetPlan(target.name, tuple(steps), planned.files_here[target.name])


def _title(step) -> str:
    return step.title or type(step).__name__


def _node_title(graph: BuildGraph, key: str) -> str:
    return _title(graph.steps[key])


def render_plan(targets: Sequence[TargetPlan], graph: BuildGraph) -> str:
    lines = []
    for target in targets:
        lines.append(f"{target.name}:")
        if not target.files_here:
            lines.append("  (files not needed here: the push mounts its layers from the cache)")
        for step in target.steps:
            why = f"  ({step.reason})" if step.reason else ""
            lines.append(f"  {step.key[:12]}  {step.state.value:10}  {step.title}{why}")
    to_build = {s.key for t in targets for s in t.steps if s.state is StepState.TO_BUILD}
    remote = {s.key for t in targets for s in t.steps if s.state is StepState.REMOTE}
    unneeded = {s.key for t in targets for s in t.steps if s.state is StepState.NOT_NEEDED}
    steps = len(graph.steps)
    cached = steps - len(to_build) - len(remote) - len(unneeded)
    lines.append(
        f"{steps} distinct steps: {cached} cached, {len(remote)} remote, "
        f"{len(to_build)} to build" + (f", {len(unneeded)} not needed" if unneeded else "")
    )
    return "\n".join(lines)


def render_graph(graph: BuildGraph, targets: Sequence[TargetPlan], fmt: str) -> str:
    names = {target.key: target.name for target in graph.targets}
    if fmt == "json":
        doc = {
            "nodes": [
                {"key": key, "title": _node_title(graph, key), "target": names.get(key)}
                for key in graph.steps
            ],
            "edges": [[a, b] for a, b in graph.edges],
        }
        return json.dumps(doc, indent=2)
    if fmt == "dot":
        out = ["digraph buildgraph {", "  rankdir=LR;"]
        for key in graph.steps:
            label = _node_title(graph, key).replace('"', '\\"')
            shape = ",shape=box,style=bold" if key in names else ""
            out.append(f'  "{key[:12]}" [label="{label}"{shape}];')
        out += [f'  "{a[:12]}" -> "{b[:12]}";' for a, b in graph.edges]
        out.append("}")
        return "\n".join(out)
    out = []
    for key in graph.steps:
        inputs = ", ".join(parent[:12] for parent in graph.inputs[key])
        target = f"  => {names[key]}" if key in names else ""
        out.append(
            f"{key[:12]}  {_node_title(graph, key)}" + (f"  <- {inputs}" if inputs else "") + target
        )
    return "\n".join(out)
