"""The scheduler carries out a plan and decides nothing: an in-memory executor counts what it
was asked, a collecting sink keeps the events."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pytest
from lowered import service_graph, titled

from buildgraph.cache.steps import LayerRef, StepRecord
from buildgraph.errors import AuthError, StepFailed
from buildgraph.graph.model import BuildGraph, Target
from buildgraph.graph.steps import Step
from buildgraph.image.oci import Descriptor
from buildgraph.solver.events import CollectingSink, StepState
from buildgraph.solver.executor import Executor, Unusable
from buildgraph.solver.plan import Action, Plan, plan
from buildgraph.solver.scheduler import execute


def record_of(key: str) -> StepRecord:
    blob = Descriptor("application/vnd.oci.image.layer.v1.tar", "sha256:" + key[:32] * 2, 1)
    return StepRecord((LayerRef(blob, blob.digest),), ())


class CountingExecutor:
    """Keeps records in memory and counts every call; `unusable` keys raise Unusable,
    `failing` keys fail to build."""

    def __init__(self, unusable: set[str] = frozenset(), failing: set[str] = frozenset()):
        self.unusable = set(unusable)
        self.failing = set(failing)
        self.calls: Counter[tuple[str, str]] = Counter()
        self.inputs: dict[str, set[str]] = {}
        self.exports: dict[str, StepRecord] = {}
        self.lock = threading.Lock()

    def _count(self, method: str, key: str) -> None:
        with self.lock:
            self.calls[method, key] += 1

    def _cached(self, method: str, key: str) -> StepRecord:
        self._count(method, key)
        if key in self.unusable:
            raise Unusable(f"{method}: entry of {key[:12]} is corrupt")
        return record_of(key)

    def start(self, plan: Plan) -> None:
        self._count("start", "")

    def use_local(self, key: str) -> StepRecord:
        return self._cached("use_local", key)

    def use_remote(self, key: str) -> StepRecord:
        return self._cached("use_remote", key)

    def fetch(self, key: str) -> StepRecord:
        return self._cached("fetch", key)

    def before_build(self) -> None:
        self._count("before_build", "")

    def build(self, key: str, step: Step, inputs: Mapping[str, StepRecord]) -> StepRecord:
        self._count("build", key)
        self.inputs[key] = set(inputs)
        if key in self.failing:
            raise StepFailed(f"{step.title}: command exited with code 1")
        return record_of(key)

    def export(self, target: Target, record: StepRecord) -> object:
        self._count("export", target.name)
        self.exports[target.name] = record
        return target.name

    def cancel(self) -> None:
        self._count("cancel", "")


def methods(executor: CountingExecutor, method: str) -> set[str]:
    return {key for (name, key), _ in executor.calls.items() if name == method}


def graph_of(tmp_path: Path, *names: str) -> BuildGraph:
    return service_graph(tmp_path, list(names))


def test_the_executor_is_asked_exactly_what_the_plan_says_once_each(tmp_path: Path) -> None:
    graph = graph_of(tmp_path, "a", "b")
    a, b = (target.key for target in graph.targets)
    local = set(graph.needed_by(b))  # b all cached; a: only its last step in the remote cache
    planned = plan(graph, local=local, remote={a})
    executor: Executor = (counting := CountingExecutor())
    sink = CollectingSink()
    outcome = execute(planned, executor=executor, sink=sink, jobs=2)
    assert methods(counting, "use_local") == set(planned.keys(Action.USE_LOCAL))
    assert methods(counting, "fetch") == {a} == set(planned.keys(Action.FETCH))
    assert methods(counting, "build") == set() and methods(counting, "before_build") == set()
    assert max(counting.calls.values()) == 1
    assert counting.exports == {"a": record_of(a), "b": record_of(b)}
    assert set(sink.keys(StepState.CACHED)) == local and sink.keys(StepState.REMOTE) == [a]
    assert sorted(sink.exports(StepState.DONE)) == ["a", "b"]
    assert outcome.exported == {"a": "a", "b": "b"} and not outcome.failures
    assert outcome.unneeded == frozenset(planned.keys(Action.NOT_NEEDED))


def test_a_step_is_built_after_its_inputs_with_their_records(tmp_path: Path) -> None:
    graph = graph_of(tmp_path, "a")
    planned = plan(graph, local=set(), remote=set())
    counting = CountingExecutor()
    sink = CollectingSink()
    outcome = execute(planned, executor=counting, sink=sink, jobs=2)
    assert methods(counting, "build") == set(graph.steps)
    assert counting.calls["before_build", ""] == 1
    for key, inputs in counting.inputs.items():
        assert inputs == set(graph.inputs[key])
    order = sink.keys(StepState.RUNNING)
    for key in graph.steps:  # no step started before an input of it was done
        done = sink.keys(StepState.DONE)
        assert all(done.index(parent) < done.index(key) for parent in graph.inputs[key])
        assert all(order.index(parent) < order.index(key) for parent in graph.inputs[key])
    assert set(outcome.records) == set(graph.steps) and outcome.cached == frozenset()


def test_an_unusable_entry_is_replanned_and_built_with_what_it_needs(tmp_path: Path) -> None:
    """The last step was the only one needed; its entry is corrupt, so it is built, and the
    steps under it that were not needed before are built first."""
    graph = graph_of(tmp_path, "a")
    (last,) = (target.key for target in graph.targets)
    planned = plan(graph, local={last}, remote=set())
    counting = CountingExecutor(unusable={last})
    sink = CollectingSink()
    outcome = execute(planned, executor=counting, sink=sink, jobs=2)
    assert methods(counting, "use_local") == {last}
    assert methods(counting, "build") == set(graph.steps)
    (event,) = [e for e in sink.events if getattr(e, "state", None) is StepState.TO_BUILD]
    assert event.key == last and "corrupt" in event.reason
    assert counting.exports == {"a": record_of(last)} and not outcome.unneeded


def test_a_fetch_that_fails_its_digest_builds_the_step(tmp_path: Path) -> None:
    graph = graph_of(tmp_path, "a")
    (last,) = (target.key for target in graph.targets)
    planned = plan(graph, local=set(), remote={last})
    counting = CountingExecutor(unusable={last})
    outcome = execute(planned, executor=counting, sink=CollectingSink(), jobs=1)
    assert methods(counting, "fetch") == {last}
    assert methods(counting, "build") == set(graph.steps)
    assert outcome.records[last] == record_of(last)


def test_a_failed_step_skips_what_needs_it_and_its_target(tmp_path: Path) -> None:
    graph = graph_of(tmp_path, "a", "b")
    planned = plan(graph, local=set(), remote=set())
    a_only = [k for k in graph.needed_by(graph.targets[0].key) if graph.consumers[k]]
    failing = next(k for k in a_only if graph.steps[k].title.endswith("RUN echo built >> /out.txt"))
    counting = CountingExecutor(failing={failing})
    sink = CollectingSink()
    outcome = execute(planned, executor=counting, sink=sink, jobs=1, keep_going=True)
    assert list(outcome.failures) == [failing]
    skipped = set(sink.keys(StepState.SKIPPED))
    assert titled(graph, skipped) == [
        "COPY --from=builder /out.txt /app/out.txt",
        "RUN cat /app/out.txt > /app/copy.txt",
        "ENV MODE=prod",
        'CMD ["cat", "/app/copy.txt"]',
    ]
    assert sink.exports(StepState.SKIPPED) == ["a"] and sink.exports(StepState.DONE) == ["b"]
    assert set(outcome.skipped) == skipped


def test_without_keep_going_nothing_starts_after_a_failure(tmp_path: Path) -> None:
    """Once a's COPY fails, no step is started any more (what was started finishes), so b's
    last step is never built and no target is exported; with keep_going, b is."""
    graph = graph_of(tmp_path, "a", "b")
    planned = plan(graph, local=set(), remote=set())
    a_last = graph.targets[0].key
    (failing,) = [k for k in graph.needed_by(a_last) if graph.steps[k].title.endswith("./")]
    for keep_going, exported in ((False, []), (True, ["b"])):
        counting = CountingExecutor(failing={failing})
        sink = CollectingSink()
        outcome = execute(planned, executor=counting, sink=sink, jobs=1, keep_going=keep_going)
        assert list(outcome.failures) == [failing]
        assert sink.exports(StepState.DONE) == exported
        assert (graph.targets[1].key in methods(counting, "build")) is keep_going


def test_a_refusal_before_the_first_build_ends_the_run(tmp_path: Path) -> None:
    """`before_build` is where refused push credentials stop a run before anything is built."""

    class Refusing(CountingExecutor):
        def before_build(self) -> None:
            super().before_build()
            raise AuthError("push to the remote cache refused")

    graph = graph_of(tmp_path, "a")
    counting = Refusing()
    with pytest.raises(AuthError):
        execute(
            plan(graph, local=set(), remote=set()), executor=counting, sink=CollectingSink(), jobs=1
        )
    assert methods(counting, "build") == set()


class OverlapExecutor(CountingExecutor):
    """Counts how many builds run at once; each build takes a little while, so they overlap
    when the scheduler lets them; records the order builds start in."""

    def __init__(self) -> None:
        super().__init__()
        self.now = self.most = 0
        self.started: list[str] = []

    def build(self, key: str, step: Step, inputs: Mapping[str, StepRecord]) -> StepRecord:
        import time

        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.started.append(key)
        try:
            time.sleep(0.01)
            return super().build(key, step, inputs)
        finally:
            with self.lock:
                self.now -= 1


def test_no_more_builds_run_at_once_than_jobs(tmp_path: Path) -> None:
    graph = graph_of(tmp_path, "a", "b", "c", "d")
    overlap = OverlapExecutor()
    execute(plan(graph, local=set(), remote=set()), executor=overlap, sink=CollectingSink(), jobs=2)
    assert overlap.most == 2
    assert methods(overlap, "build") == set(graph.steps)


def test_a_started_chain_goes_on_before_another_as_long_starts(tmp_path: Path) -> None:
    """With one slot and services of the same length, a service is built to its end before
    the last one begins (its trees are at hand, its image is done sooner); the steps they
    share aside. Breadth first, every service would start before any is done."""
    from lowered import lower

    from buildgraph.graph.model import build_graph

    chain = "FROM busybox\nCOPY main.txt /\nRUN cat /main.txt > /a\nRUN cat /a > /b\n"
    plans = {name: lower(tmp_path / name, chain, {"main.txt": name}) for name in "abc"}
    graph = build_graph(
        (built.steps for built in plans.values()),
        (Target(name, built.target.key) for name, built in plans.items()),
    )
    overlap = OverlapExecutor()
    execute(plan(graph, local=set(), remote=set()), executor=overlap, sink=CollectingSink(), jobs=1)
    targets = {target.key: target.name for target in graph.targets}
    owner = {}
    for target_key, name in targets.items():
        for key in graph.needed_by(target_key):
            owner.setdefault(key, set()).add(name)
    own = [next(iter(owner[key])) for key in overlap.started if len(owner[key]) == 1]
    first, last = own[0], own[-1]
    assert first != last
    finished_first = max(index for index, name in enumerate(own) if name == first)
    started_last = min(index for index, name in enumerate(own) if name == last)
    assert finished_first < started_last
