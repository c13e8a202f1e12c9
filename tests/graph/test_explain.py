"""Why a step must be built: every key field of every step kind is named when it changes."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pytest
from key_cases import EVERY_FIELD

from buildgraph.graph.context import StatCache
from buildgraph.graph.explain import reason, summarize
from buildgraph.graph.keys import HEALTHCHECK_KEY_FIELDS, RUN_MOUNT_KEY_FIELDS
from buildgraph.graph.steps import CopySource, CopyStep, RunMount, RunStep

RUN = RunStep(
    "p" * 32,
    ("/bin/sh", "-c", "pip install /w/*.whl"),
    (),
    "",
    "/",
    "default",
    mounts=(RunMount("bind", "/w", source="/wheels", stage_key="s" * 32, readonly=True),),
)
GENERIC = {"no earlier build", "not in the cache", "parent step changed", "instruction changed"}


def _why(now, before, parent_changed: bool = False) -> str:
    # Summaries are stored as JSON between runs: compare with what a later run reads back.
    stored = json.loads(json.dumps(summarize(_no_context(before), {}, StatCache())))
    return reason(summarize(_no_context(now), {}, StatCache()), stored, parent_changed)


def _no_context(step):
    """The key cases' COPY names a context directory that does not exist; its files are
    compared by test_a_copy_names_the_file_that_changed."""
    if isinstance(step, CopyStep):
        return replace(step, source=replace(step.source, context=""))
    return step


def test_a_run_whose_mounted_stage_changed_says_so() -> None:
    moved = replace(RUN, mounts=(replace(RUN.mounts[0], stage_key="t" * 32),))
    assert _why(moved, RUN) == "a stage it mounts (--mount from=) changed"
    assert _why(RUN, RUN, parent_changed=True) == "parent step changed"
    assert _why(RUN, RUN) == "not in the cache"


def test_a_record_from_before_key_fields_were_summarized_names_only_the_parent() -> None:
    older = {"kind": "run", "parent": RUN.parent, "instruction": list(RUN.argv)}
    assert reason(summarize(RUN, {}, StatCache()), older, True) == "parent step changed"
    assert reason(summarize(RUN, {}, StatCache()), older, False) == "not in the cache"


OWN_FIELDS = [case for case in EVERY_FIELD if not case[2].endswith(".parent")]


@pytest.mark.parametrize(
    ("step", "changed", "field"), OWN_FIELDS, ids=[case[2] for case in OWN_FIELDS]
)
def test_each_key_field_is_named_when_it_changes(step, changed, field: str) -> None:
    why = _why(changed, step)
    assert why not in GENERIC - {"instruction changed"}
    if field not in ("RunStep.argv", "ConfigStep.instruction"):
        assert why != "instruction changed", "a field other than the instruction was changed"


def test_the_fields_of_one_kind_are_told_apart() -> None:
    """Within a step kind, different fields give different reasons, except where one name
    covers them: a --mount (its mounted stage is named apart) and the healthcheck."""
    by_reason: dict[tuple[str, str], set[str]] = defaultdict(set)
    for step, changed, field in OWN_FIELDS:
        kind, _, name = field.partition(".")
        by_reason[kind, _why(changed, step)].add(name)
    shared = {key: names for key, names in by_reason.items() if len(names) > 1}
    assert shared == {
        ("RunMount", "--mount changed"): set(RUN_MOUNT_KEY_FIELDS) - {"stage_key"},
        ("Healthcheck", "image config healthcheck changed"): set(HEALTHCHECK_KEY_FIELDS),
    }


def test_a_copy_names_the_file_that_changed(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one")
    step = CopyStep("p" * 32, CopySource("", str(tmp_path), ("a.txt",), "d" * 32), ("a.txt",), "/")
    before = json.loads(json.dumps(summarize(step, {}, StatCache())))
    (tmp_path / "a.txt").write_text("two")
    now = summarize(replace(step, source=replace(step.source, digest="e" * 32)), {}, StatCache())
    assert reason(now, before, False) == "file a.txt changed"
