"""`buildgraph plan` and `graph`: what a run would do, and why, without running anything."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import networkx as nx

from buildgraph.cache.builds import BuildRecords
from buildgraph.cache.local import LocalStore
from buildgraph.cache.steps import StepIndex
from buildgraph.commands.build import ClientFactory, compile_graph
from buildgraph.commands.run import Compiled, compile_project
from buildgraph.frontend.buildfile import Project
from buildgraph.graph.explain import reason, summarize
from buildgraph.graph.query import chain
from buildgraph.solver.events import StepState
from buildgraph.solver.remote import remote_session
from buildgraph.solver.scheduler import add_export, not_needed


@dataclass(frozen=True, slots=True)
class PlannedStep:
    key: str
    title: str
    state: StepState  # CACHED or TO_BUILD
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TargetPlan:
    name: str
    steps: tuple[PlannedStep, ...]  # the target's chain, base first


def union_graph(compiled: Compiled, *, exports: bool = False) -> nx.DiGraph:
    graph = compile_graph(*compiled.plans.values())
    if exports:  # one export node per target, as `run` schedules them
        for name, plan in compiled.plans.items():
            add_export(graph, name, plan.target.key)
    return graph


def plan_project(
    project: Project,
    names: Sequence[str],
    *,
    store: LocalStore,
    client: ClientFactory,
    cache_from: str | None = None,
    warn: Callable[[str], None] = lambda _: None,
) -> tuple[tuple[TargetPlan, ...], nx.DiGraph]:
    compiled = compile_project(project, names, store=store, client=client)
    graph = union_graph(compiled, exports=True)
    index = StepIndex(store.root / "steps")
    remote = remote_session(
        store,
        client,
        source=cache_from if cache_from is not None else project.cache.remote,
        target=None,
        warn=warn,
        required=False,
        export_only=None,
    )
    steps = [key for key in graph if "step" in graph.nodes[key]]
    local = {key for key in steps if index.has(key)}
    if remote is not None:  # every step missing here (a run skips those below hits)
        remote.lookup(key for key in steps if key not in local)
    hits = set(remote.hits) if remote is not None else set()
    unneeded = not_needed(graph, local | hits)  # what a run would neither read nor build
    records = BuildRecords(store.root / "targets")
    stat_cache = compiled.stat_cache
    targets = []
    for name, plan in compiled.plans.items():
        before = records.load(name) or []
        planned = []
        parent_changed = False
        for position, key in enumerate(chain(graph, plan.target.key)):
            step = graph.nodes[key]["step"]
            if key in local:
                planned.append(PlannedStep(key, _title(step), StepState.CACHED))
                parent_changed = False
                continue
            if key in hits:
                planned.append(PlannedStep(key, _title(step), StepState.REMOTE))
                parent_changed = False
                continue
            if key in unneeded:
                why = "a later step is cached"
                planned.append(PlannedStep(key, _title(step), StepState.NOT_NEEDED, why))
                parent_changed = True
                continue
            now = summarize(step, compiled.ignores, stat_cache)
            earlier = before[position] if position < len(before) else None
            why = reason(now, earlier, parent_changed)
            planned.append(PlannedStep(key, _title(step), StepState.TO_BUILD, why))
            parent_changed = True
        targets.append(TargetPlan(name, tuple(planned)))
    return tuple(targets), graph


def _title(step) -> str:
    return step.title or type(step).__name__


def _node_title(graph: nx.DiGraph, key: str) -> str:
    node = graph.nodes[key]
    return node.get("title") or _title(node["step"])


def render_plan(targets: Sequence[TargetPlan], graph: nx.DiGraph) -> str:
    lines = []
    for target in targets:
        lines.append(f"{target.name}:")
        for step in target.steps:
            why = f"  ({step.reason})" if step.reason else ""
            lines.append(f"  {step.key[:12]}  {step.state.value:10}  {step.title}{why}")
    to_build = {s.key for t in targets for s in t.steps if s.state is StepState.TO_BUILD}
    remote = {s.key for t in targets for s in t.steps if s.state is StepState.REMOTE}
    unneeded = {s.key for t in targets for s in t.steps if s.state is StepState.NOT_NEEDED}
    steps = sum(1 for key in graph if "step" in graph.nodes[key])
    cached = steps - len(to_build) - len(remote) - len(unneeded)
    lines.append(
        f"{steps} distinct steps: {cached} cached, {len(remote)} remote, "
        f"{len(to_build)} to build" + (f", {len(unneeded)} not needed" if unneeded else "")
    )
    return "\n".join(lines)


def render_graph(graph: nx.DiGraph, targets: Sequence[TargetPlan], fmt: str) -> str:
    names = {t.steps[-1].key: t.name for t in targets if t.steps}
    if fmt == "json":
        doc = {
            "nodes": [
                {"key": key, "title": _node_title(graph, key), "target": names.get(key)}
                for key in nx.topological_sort(graph)
            ],
            "edges": [[a, b] for a, b in graph.edges],
        }
        return json.dumps(doc, indent=2)
    if fmt == "dot":
        out = ["digraph buildgraph {", "  rankdir=LR;"]
        for key in nx.topological_sort(graph):
            label = _node_title(graph, key).replace('"', '\\"')
            shape = ",shape=box,style=bold" if key in names else ""
            out.append(f'  "{key[:12]}" [label="{label}"{shape}];')
        out += [f'  "{a[:12]}" -> "{b[:12]}";' for a, b in graph.edges]
        out.append("}")
        return "\n".join(out)
    out = []
    for key in nx.topological_sort(graph):
        inputs = ", ".join(parent[:12] for parent in graph.predecessors(key))
        target = f"  => {names[key]}" if key in names else ""
        out.append(
            f"{key[:12]}  {_node_title(graph, key)}" + (f"  <- {inputs}" if inputs else "") + target
        )
    return "\n".join(out)
