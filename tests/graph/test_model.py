"""The typed build graph: one step per key across targets, inputs first, targets as values."""

from __future__ import annotations

from pathlib import Path

from lowered import SERVICE, lower, service_graph

from buildgraph.graph.model import Target, build_graph
from buildgraph.graph.steps import CopyStep


def test_equal_steps_of_two_targets_are_one_step(tmp_path: Path) -> None:
    one = lower(tmp_path / "one", SERVICE, {"main.txt": "same\n"})
    two = lower(tmp_path / "two", SERVICE, {"main.txt": "same\n"})
    graph = build_graph([one.steps, two.steps], [Target("one", one.target.key)])
    assert one.target.key == two.target.key  # same Dockerfile, same files: same keys
    assert list(graph.steps) == list(one.steps)
    assert [target.name for target in graph.targets] == ["one"]


def test_inputs_come_first_whatever_order_the_plans_come_in(tmp_path: Path) -> None:
    graph = service_graph(tmp_path, ["a", "b"])
    reversed_graph = build_graph([dict(reversed(list(graph.steps.items())))], graph.targets)
    for candidate in (graph, reversed_graph):
        position = {key: index for index, key in enumerate(candidate.steps)}
        assert all(position[parent] < position[key] for parent, key in candidate.edges)


def test_needed_by_includes_the_stage_copied_from_and_chain_does_not(tmp_path: Path) -> None:
    graph = service_graph(tmp_path, ["a"])
    (last,) = [target.key for target in graph.targets]
    copy_from = next(
        key
        for key, step in graph.steps.items()
        if isinstance(step, CopyStep) and step.source.stage_key
    )
    builder_last = graph.steps[copy_from].source.stage_key
    assert builder_last in graph.needed_by(last)
    assert builder_last not in graph.chain(last)
    assert graph.needed_by(last)[-1] == last and len(graph.needed_by(last)) == len(graph.steps)
    assert graph.results() == (last,)
    assert set(graph.consumers[builder_last]) == {copy_from}
