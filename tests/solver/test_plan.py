"""The plan is a pure function of the graph and the cache facts: one action per step, why."""

from __future__ import annotations

from pathlib import Path

from lowered import service_graph, titled

from buildgraph.graph.model import BuildGraph
from buildgraph.solver.events import StepState
from buildgraph.solver.plan import BELOW_CACHED, NOT_IN_CACHE, Action, plan, replan

BUILDER = ["COPY main.txt ./", "RUN cat main.txt > /out.txt", "RUN echo built >> /out.txt"]
RUNTIME = ["COPY --from=builder /out.txt /app/out.txt", "RUN cat /app/out.txt > /app/copy.txt"]
RUNTIME += ["ENV MODE=prod", 'CMD ["cat", "/app/copy.txt"]']
NAMES = [f"svc{n:02}" for n in range(1, 13)]


def below(graph: BuildGraph, key: str) -> set[str]:
    """KEY and every step that reads it, directly or not."""
    found, stack = set(), [key]
    while stack:
        top = stack.pop()
        if top not in found:
            found.add(top)
            stack.extend(graph.consumers[top])
    return found


def source_copy(graph: BuildGraph, target: str) -> str:
    """The builder's `COPY main.txt` of TARGET: the step its source change alters."""
    last = next(t.key for t in graph.targets if t.name == target)
    (key,) = [k for k in graph.needed_by(last) if graph.steps[k].title.endswith(BUILDER[0])]
    return key


def test_a_changed_source_builds_the_builder_steps_too(tmp_path: Path) -> None:
    """Issue 13's monorepo after a change to one source file of svc03: its builder steps from
    the COPY on and its runtime steps from the COPY --from on are to build, nothing else."""
    graph = service_graph(tmp_path, NAMES)
    changed = below(graph, source_copy(graph, "svc03"))
    planned = plan(graph, local=set(graph.steps) - changed, remote=set())
    assert titled(graph, planned.keys(Action.BUILD)) == BUILDER + RUNTIME
    assert {planned.steps[key].reason for key in changed} == {NOT_IN_CACHE}
    assert set(planned.keys(Action.USE_LOCAL)) == set(graph.steps) - changed
    assert not planned.nothing_to_do()


def test_every_step_local_is_nothing_to_do(tmp_path: Path) -> None:
    graph = service_graph(tmp_path, NAMES[:2])
    planned = plan(graph, local=set(graph.steps), remote=set())
    assert planned.nothing_to_do()
    assert {step.action.state for step in planned.steps.values()} == {StepState.CACHED}


def test_nothing_below_a_cached_last_step_is_needed(tmp_path: Path) -> None:
    graph = service_graph(tmp_path, ["svc01"])
    (last,) = [target.key for target in graph.targets]
    planned = plan(graph, local={last}, remote=set())
    assert planned.keys(Action.USE_LOCAL) == (last,)
    assert set(planned.keys(Action.NOT_NEEDED)) == set(graph.steps) - {last}
    assert {planned.steps[key].reason for key in planned.keys(Action.NOT_NEEDED)} == {BELOW_CACHED}
    assert planned.nothing_to_do()


def test_a_remote_last_step_is_fetched_only_when_its_files_are_needed_here(
    tmp_path: Path,
) -> None:
    for mounts, action in ((False, Action.FETCH), (True, Action.USE_REMOTE)):
        graph = service_graph(tmp_path / str(mounts), ["svc01"], mounts_from_cache=mounts)
        (last,) = [target.key for target in graph.targets]
        planned = plan(graph, local=set(), remote={last})
        assert planned.action(last) is action
        assert planned.files_here == {"svc01": not mounts}
        assert set(planned.keys(Action.NOT_NEEDED)) == set(graph.steps) - {last}


def test_a_remote_input_is_fetched_for_a_run_and_left_there_for_a_config_step(
    tmp_path: Path,
) -> None:
    """The runtime RUN to build reads its parent's files; the ENV to build reads none."""
    graph = service_graph(tmp_path, ["svc01"])
    (last,) = [target.key for target in graph.targets]
    steps = {graph.steps[key].title.split("] ", 1)[-1]: key for key in graph.needed_by(last)}
    run, env = steps[RUNTIME[1]], steps[RUNTIME[2]]
    copy = steps[RUNTIME[0]]
    fetched = plan(graph, local=set(), remote={copy})
    assert fetched.action(copy) is Action.FETCH and fetched.action(run) is Action.BUILD
    lazy = plan(graph, local=set(), remote={run})
    assert lazy.action(run) is Action.USE_REMOTE and lazy.action(env) is Action.BUILD
    assert lazy.action(copy) is Action.NOT_NEEDED


def test_replan_builds_an_unusable_entry_and_what_it_now_needs(tmp_path: Path) -> None:
    graph = service_graph(tmp_path, ["svc01"])
    (last,) = [target.key for target in graph.targets]
    before = plan(graph, local={last}, remote=set())
    after = replan(before, last, "corrupt step record")
    assert after.steps[last].action is Action.BUILD and after.steps[last].unusable
    assert after.steps[last].reason == "corrupt step record"
    assert set(after.keys(Action.BUILD)) == set(graph.steps)
    assert before.action(last) is Action.USE_LOCAL  # a plan is a value: the old one stands


def test_no_cache_takes_only_the_base_images_from_the_cache(tmp_path: Path) -> None:
    graph = service_graph(tmp_path, ["svc01"])
    planned = plan(graph, local=set(graph.steps), remote=set(graph.steps), no_cache=True)
    assert titled(graph, planned.keys(Action.USE_LOCAL)) == ["FROM busybox"]
    assert planned.keys(Action.FETCH, Action.USE_REMOTE, Action.NOT_NEEDED) == ()
