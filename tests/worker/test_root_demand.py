"""What the plan tells the chroot isolation's root pool: which trees steps still to run need
(worker/root_demand.py), on the step graph of two monorepo services."""

from __future__ import annotations

from pathlib import Path

from lowered import service_graph

from buildgraph.cache.steps import LayerRef, StepRecord
from buildgraph.graph.steps import ConfigStep, CopyStep, RunStep
from buildgraph.image.oci import Descriptor
from buildgraph.worker.root_demand import RootDemand


def record(*diff_ids: str) -> StepRecord:
    layers = tuple(
        LayerRef(Descriptor("", "sha256:" + d * 64, 1), "sha256:" + d * 64) for d in diff_ids
    )
    return StepRecord(layers, ())


def chain(*diff_ids: str) -> tuple[str, ...]:
    return tuple("sha256:" + d * 64 for d in diff_ids)


def key_of(graph, title: str, nth: int = 0) -> str:
    return [key for key, step in graph.steps.items() if step.title.endswith(title)][nth]


def test_a_tree_is_needed_until_its_last_reader_has_taken_it(tmp_path: Path) -> None:
    graph = service_graph(tmp_path, ["svc-a", "svc-b"])
    build = [key for key, step in graph.steps.items() if isinstance(step, RunStep | CopyStep)]
    demand = RootDemand(graph.steps, build)
    builder_last = key_of(graph, "RUN echo built >> /out.txt")
    copy_from = key_of(graph, "COPY --from=builder /out.txt /app/out.txt")
    assert isinstance(graph.steps[copy_from], CopyStep)
    assert demand.pending(chain("1")) == 0  # no record seen with these layers: no root of it
    demand.seen(builder_last, record("1", "2"))
    assert demand.pending(chain("1", "2")) == 1  # the runtime stage's COPY --from reads it
    demand.started(copy_from)
    assert demand.pending(chain("1", "2")) == 0
    demand.started(copy_from)  # said twice: counted once
    assert demand.pending(chain("1", "2")) == 0


def test_a_config_step_reads_as_the_step_whose_layers_it_holds(tmp_path: Path) -> None:
    graph = service_graph(tmp_path, ["svc-a"])
    build = [key for key, step in graph.steps.items() if isinstance(step, RunStep | CopyStep)]
    demand = RootDemand(graph.steps, build)
    source = key_of(graph, "FROM busybox")
    mkdirs = [
        key for key in build if graph.steps[key].title.endswith(("WORKDIR /src", "WORKDIR /app"))
    ]
    assert len(mkdirs) == 2  # each WORKDIR's mkdir reads its config step: busybox's layers
    assert all(isinstance(graph.steps[graph.steps[key].parent], ConfigStep) for key in mkdirs)
    demand.seen(source, record("1"))
    assert demand.pending(chain("1")) == 2
    demand.started(mkdirs[0])
    assert demand.pending(chain("1")) == 1
    config = graph.steps[mkdirs[1]].parent
    demand.seen(config, record("1"))  # its record holds the same layers: the same tree
    assert demand.pending(chain("1")) == 1


def test_steps_not_to_be_built_need_nothing(tmp_path: Path) -> None:
    graph = service_graph(tmp_path, ["svc-a"])
    demand = RootDemand(graph.steps, [])
    for key in graph.steps:
        demand.seen(key, record("1"))
    assert demand.pending(chain("1")) == 0
