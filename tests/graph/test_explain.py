"""Why a step must be built: the reasons a RUN gives."""

from __future__ import annotations

from dataclasses import replace

from buildgraph.graph.context import StatCache
from buildgraph.graph.explain import reason, summarize
from buildgraph.graph.steps import RunMount, RunStep

RUN = RunStep(
    "p" * 32,
    ("/bin/sh", "-c", "pip install /w/*.whl"),
    (),
    "",
    "/",
    "default",
    mounts=(RunMount("bind", "/w", source="/wheels", stage_key="s" * 32, readonly=True),),
)


def test_a_run_whose_mounted_stage_changed_says_so() -> None:
    before = summarize(RUN, {}, StatCache())
    moved = replace(RUN, mounts=(replace(RUN.mounts[0], stage_key="t" * 32),))
    assert reason(summarize(moved, {}, StatCache()), before, False) == (
        "a stage it mounts (--mount from=) changed"
    )
    assert reason(summarize(RUN, {}, StatCache()), before, True) == "parent step changed"
    older = {key: value for key, value in before.items() if key != "mounted"}  # an old record
    plain = replace(RUN, mounts=())
    assert reason(summarize(plain, {}, StatCache()), older, True) == "parent step changed"
