"""Keys: every listed field counts, nothing else does; lowering keeps keys stable."""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from key_cases import (
    CHANGED,
    CONFIG,
    COPY,
    HEALTHCHECK_CHANGED,
    MOUNT_CHANGED,
    NESTED,
    RUN,
    RUNTIME_CONFIG_CHANGED,
    SOURCE,
    SOURCE_CHANGED,
)

from buildgraph.errors import Location
from buildgraph.frontend.dockerfile import parse_dockerfile
from buildgraph.frontend.ignore import load_dockerignore
from buildgraph.graph.context import KEEP_DAYS, StatCache
from buildgraph.graph.keys import (
    CONFIG_KEY_FIELDS,
    COPY_KEY_FIELDS,
    KEY_FIELDS,
    NOT_KEYED,
    RUN_KEY_FIELDS,
    SOURCE_KEY_FIELDS,
    step_key,
)
from buildgraph.graph.lower import BaseImage, lower_dockerfile
from buildgraph.graph.steps import (
    ConfigStep,
    CopySource,
    CopyStep,
    RunMount,
    RunStep,
    SourceStep,
)
from buildgraph.image.config import Healthcheck, ImageConfig, RuntimeConfig
from buildgraph.image.oci import Platform

CASES = [
    *((RUN, name) for name in RUN_KEY_FIELDS),
    *((COPY, name) for name in COPY_KEY_FIELDS),
    *((CONFIG, name) for name in CONFIG_KEY_FIELDS),
    *((SOURCE, name) for name in SOURCE_KEY_FIELDS),
]


@pytest.mark.parametrize(("step", "name"), CASES, ids=[f"{type(s).__name__}.{n}" for s, n in CASES])
def test_each_listed_field_changes_the_key(step, name: str) -> None:
    assert step_key(replace(step, **{name: CHANGED[name]})) != step_key(step)


@pytest.mark.parametrize(("step", "change", "field"), NESTED, ids=[case[2] for case in NESTED])
def test_each_listed_nested_field_changes_the_key(step, change, field: str) -> None:
    assert step_key(change(field.split(".")[1])) != step_key(step)


def _dataclasses_in(hint: object) -> set[type]:
    """Dataclasses a field's type can hold (through tuples, unions and Optional)."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return {hint}
    found: set[type] = set()
    for argument in typing.get_args(hint):
        found |= _dataclasses_in(argument)
    return found


def _reachable_dataclasses() -> set[type]:
    seen: set[type] = set()
    todo = [SourceStep, RunStep, CopyStep, ConfigStep]
    while todo:
        kind = todo.pop()
        if kind in seen:
            continue
        seen.add(kind)
        for hint in typing.get_type_hints(kind).values():
            todo.extend(_dataclasses_in(hint) - {Location})
    return seen


def test_every_dataclass_in_a_step_has_a_key_field_list() -> None:
    assert _reachable_dataclasses() == set(KEY_FIELDS)
    assert set(NOT_KEYED) == set(KEY_FIELDS)


@pytest.mark.parametrize("kind", list(KEY_FIELDS), ids=lambda kind: kind.__name__)
def test_every_field_is_keyed_or_excluded_by_name(kind: type) -> None:
    keyed = set(KEY_FIELDS[kind].values())
    excluded = set(NOT_KEYED[kind])
    assert not keyed & excluded
    assert keyed | excluded == {field.name for field in dataclasses.fields(kind)}


def test_every_listed_field_has_a_change_test() -> None:
    tested = {
        RunStep: set(RUN_KEY_FIELDS),
        CopyStep: set(COPY_KEY_FIELDS),
        ConfigStep: set(CONFIG_KEY_FIELDS),
        SourceStep: set(SOURCE_KEY_FIELDS),
        RunMount: set(MOUNT_CHANGED),
        RuntimeConfig: set(RUNTIME_CONFIG_CHANGED),
        Healthcheck: set(HEALTHCHECK_CHANGED),
        CopySource: set(SOURCE_CHANGED),
    }
    assert tested == {kind: set(names.values()) for kind, names in KEY_FIELDS.items()}
    assert all(
        name in CHANGED
        for kind in (RunStep, CopyStep, ConfigStep, SourceStep)
        for name in tested[kind]
    )


@pytest.mark.parametrize("step", [RUN, COPY, CONFIG, SOURCE])
def test_title_and_location_are_not_in_the_key(step) -> None:
    moved = replace(step, title="other", where=Location("elsewhere", 9))
    assert step_key(moved) == step_key(step)


def test_copy_source_content_and_stage_change_the_key() -> None:
    other_content = replace(COPY, source=replace(COPY.source, digest="e" * 32))
    other_stage = replace(COPY, source=replace(COPY.source, stage_key="s" * 32))
    moved_context = replace(COPY, source=replace(COPY.source, context="/elsewhere"))
    assert step_key(other_content) != step_key(COPY)
    assert step_key(other_stage) != step_key(COPY)
    assert step_key(moved_context) == step_key(COPY)  # a moved checkout still hits


# -- lowering ----------------------------------------------------------------------------------
BASE = BaseImage("docker.io/library/busybox:latest", "sha256:" + "a" * 64, ImageConfig())


def keys_of(context: Path, text: str, **build_args: str) -> list[str]:
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(text)
    plan = lower_dockerfile(
        parse_dockerfile(dockerfile),
        target=None,
        build_args=build_args,
        context=context,
        ignore=load_dockerignore(context),
        resolve_base=lambda ref, where: BASE,
        stat_cache=StatCache(),
        platform=Platform(),
    )
    return list(plan.steps)


DOCKERFILE = """FROM busybox
RUN echo one
ARG V=1
RUN echo $V
COPY app.txt /app.txt
RUN cat /app.txt
"""


@pytest.fixture
def context(tmp_path: Path) -> Path:
    (tmp_path / "app.txt").write_text("v1")
    return tmp_path


def test_a_comment_line_changes_no_key(context: Path) -> None:
    before = keys_of(context, DOCKERFILE)
    after = keys_of(
        context, "# a comment\n" + DOCKERFILE.replace("RUN echo one", "RUN echo one\n# x")
    )
    assert before == after


def test_a_build_arg_changes_keys_from_where_it_is_visible(context: Path) -> None:
    before = keys_of(context, DOCKERFILE)
    after = keys_of(context, DOCKERFILE, V="2")
    assert before[:2] == after[:2]  # FROM and the first RUN cannot see V
    assert all(a != b for a, b in zip(before[2:], after[2:], strict=True))


def test_file_content_changes_the_copy_and_everything_after(context: Path) -> None:
    before = keys_of(context, DOCKERFILE)
    (context / "app.txt").write_text("v2")
    after = keys_of(context, DOCKERFILE)
    assert before[:3] == after[:3]
    assert before[3] != after[3] and before[4] != after[4]


def test_touching_a_file_changes_no_key(context: Path) -> None:
    before = keys_of(context, DOCKERFILE)
    path = context / "app.txt"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns + 10**9, stat.st_mtime_ns + 10**9))
    assert keys_of(context, DOCKERFILE) == before


def test_chmod_keeps_source_modes_out_of_the_key(context: Path) -> None:
    text = "FROM busybox\nCOPY --chmod=644 app.txt /app.txt\n"
    before = keys_of(context, text)
    (context / "app.txt").chmod(0o600)
    assert keys_of(context, text) == before
    plain = "FROM busybox\nCOPY app.txt /app.txt\n"
    first = keys_of(context, plain)
    (context / "app.txt").chmod(0o644)
    assert keys_of(context, plain) != first


def test_equal_stages_in_one_dockerfile_are_one_step(context: Path) -> None:
    text = (
        "FROM busybox AS a\nRUN echo x\n"
        "FROM busybox AS b\nRUN echo x\n"
        "FROM a\nCOPY --from=b /x /x\n"
    )
    keys = keys_of(context, text)
    assert len(keys) == len(set(keys))
    assert len(keys) == 3  # FROM, one RUN shared by stages a and b, COPY


INSTRUCTIONS = st.sampled_from(
    ["RUN echo {n}", "ENV V{n}={n}", "LABEL l{n}={n}", "COPY app.txt /f{n}", "USER {n}"]
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lines=st.lists(INSTRUCTIONS, min_size=1, max_size=8), data=st.data())
def test_changing_one_instruction_changes_its_key_and_every_later_one(
    context: Path, lines: list[str], data: st.DataObject
) -> None:
    text = ["FROM busybox", *(line.format(n=number) for number, line in enumerate(lines))]
    changed = data.draw(st.integers(min_value=1, max_value=len(lines)))
    edited = list(text)
    edited[changed] = lines[changed - 1].format(n=f"{changed - 1}x")
    before = keys_of(context, "\n".join(text) + "\n")
    after = keys_of(context, "\n".join(edited) + "\n")
    assert before[:changed] == after[:changed]  # FROM and everything above the change
    assert all(old != new for old, new in zip(before[changed:], after[changed:], strict=True))


def test_the_stat_cache_survives_a_restart_and_spares_reading(tmp_path: Path) -> None:
    source = tmp_path / "f.txt"
    source.write_text("content")
    first = StatCache()
    digest = first.content_hash(source, source.stat())
    first.save(tmp_path / "stat.json")
    loaded = StatCache.load(tmp_path / "stat.json")
    before = source.stat()
    source.write_text("CONTENT")  # same size and inode; put the mtime back as it was
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert loaded.content_hash(source, source.stat()) == digest  # a hit: the file was not read
    source.write_text("changed!")  # a new size and mtime: read again
    assert loaded.content_hash(source, source.stat()) != digest
    (tmp_path / "bad.json").write_text("{not json")
    assert StatCache.load(tmp_path / "bad.json").entries == {}


def test_the_stat_cache_keeps_other_targets_entries_and_drops_old_ones(tmp_path: Path) -> None:
    saved = tmp_path / "stat.json"
    one, two = tmp_path / "one.txt", tmp_path / "two.txt"
    one.write_text("1")
    two.write_text("2")
    first = StatCache()
    first.content_hash(one, one.stat())
    first.content_hash(two, two.stat())
    first.save(saved)
    # A run that uses only `one` (a subset of the targets) keeps `two` for the next run.
    subset = StatCache.load(saved)
    subset.content_hash(one, one.stat())
    subset.save(saved)
    assert {row[0] for row in json.loads(saved.read_text())["entries"]} == {str(one), str(two)}
    # Nothing new and everything used today: the file is not even rewritten.
    before = saved.stat().st_mtime_ns
    again = StatCache.load(saved)
    again.content_hash(one, one.stat())
    again.save(saved)
    assert saved.stat().st_mtime_ns == before
    # A changed file replaces its old entry; an entry unused for KEEP_DAYS is dropped.
    rows = json.loads(saved.read_text())["entries"]
    for row in rows:
        if row[0] == str(two):
            row[5] -= KEEP_DAYS + 1
    saved.write_text(json.dumps({"entries": rows}))
    one.write_text("one, changed")
    later = StatCache.load(saved)
    later.content_hash(one, one.stat())
    later.save(saved)
    rows = json.loads(saved.read_text())["entries"]
    assert [(row[0], row[1]) for row in rows] == [(str(one), len("one, changed"))]
