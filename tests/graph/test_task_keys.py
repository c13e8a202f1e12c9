"""Task keys: every listed field changes the key; nothing else does."""

from __future__ import annotations

import dataclasses

import pytest

from buildgraph.graph.task_keys import TASK_KEY_FIELDS, TaskInputs, files_digest, task_key

BASE = TaskInputs(
    image="a" * 32,
    argv=("pytest", "-q"),
    env=(("A", "1"),),
    workdir="/app",
    user="",
    network="none",
    inputs=(("tests/test_x.py", "f00:-"),),
    outputs=("junit.xml",),
    depends=(("schema", "d1"),),
)
CHANGED = {
    "image": "b" * 32,
    "argv": ("pytest", "-x"),
    "env": (("A", "2"),),
    "workdir": "/",
    "user": "1000",
    "network": "host",
    "inputs": (("tests/test_x.py", "f01:-"),),
    "outputs": ("junit.xml", "coverage.xml"),
    "depends": (("schema", "d2"),),
    "layout": ("/src", "/out", "/dependencies"),
}


def test_every_field_of_the_key_is_tested() -> None:
    assert set(CHANGED) == set(TASK_KEY_FIELDS)
    assert {field.name for field in dataclasses.fields(TaskInputs)} == set(TASK_KEY_FIELDS)


@pytest.mark.parametrize("field", TASK_KEY_FIELDS)
def test_changing_a_field_changes_the_key(field: str) -> None:
    assert task_key(dataclasses.replace(BASE, **{field: CHANGED[field]})) != task_key(BASE)


def test_the_key_is_stable_and_an_input_path_counts() -> None:
    assert task_key(BASE) == task_key(dataclasses.replace(BASE))
    moved = dataclasses.replace(BASE, inputs=(("tests/test_y.py", "f00:-"),))
    assert task_key(moved) != task_key(BASE)


def test_an_outputs_digest_ignores_order_but_not_content() -> None:
    assert files_digest((("a", "1"), ("b", "2"))) == files_digest((("b", "2"), ("a", "1")))
    assert files_digest((("a", "1"),)) != files_digest((("a", "2"),))
