"""The `tasks:` section: parsed into TaskSpecs, bad input refused with its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildgraph.errors import InputError, Location
from buildgraph.frontend.buildfile import load_project, select_targets

HEAD = """version: 1
targets:
  api:
    context: .
groups:
  ci: [api-test]
tasks:
"""
GOOD = """  api-test:
    image: api:Build
    run: ["pytest", "-q"]
    workdir: /app/
    user: "1000"
    env: {PYTHONHASHSEED: 0}
    inputs: ["tests/**"]
    outputs: ["/out/junit.xml", "reports/"]
    depends_on: [schema]
  schema:
    image: api
    run: make schema > /out/schema.json
    network: host
    output_dir: build/schema
"""


def write(tmp_path: Path, tasks: str) -> Path:
    (tmp_path / "Dockerfile").write_text("FROM busybox AS build\n")
    path = tmp_path / "Buildfile.yaml"
    path.write_text(HEAD + tasks)
    return path


def test_a_task_is_read_with_its_defaults(tmp_path: Path) -> None:
    project = load_project(write(tmp_path, GOOD))
    tasks = dict(project.tasks)
    test = tasks["api-test"]
    assert (test.image, test.stage, test.image_name) == ("api", "build", "api:build")
    assert test.argv == ("pytest", "-q")
    assert (test.workdir, test.user, test.env) == ("/app", "1000", (("PYTHONHASHSEED", "0"),))
    assert test.network == "none"  # host must be asked for
    assert test.outputs == ("junit.xml", "reports")
    assert test.output_dir == tmp_path / "out/api-test"
    assert test.depends_on == ("schema",)
    assert test.where == Location(tmp_path / "Buildfile.yaml", 8)
    schema = tasks["schema"]
    assert schema.argv == ("/bin/sh", "-c", "make schema > /out/schema.json")
    assert (schema.network, schema.output_dir) == ("host", tmp_path / "build/schema")
    assert select_targets(project, ["ci"]) == ("api",)  # a group of tasks needs their images


CASES = [
    ("  t:\n    image: apx\n    run: x\n", 9, "unknown image target 'apx' (did you mean 'api'?)"),
    ("  t:\n    run: x\n", 8, "task t: missing 'image'"),
    ("  t:\n    image: api\n", 8, "task t: missing 'run'"),
    ("  t:\n    image: api\n    run: x\n    network: bridge\n", 11, "expected 'none' or 'host'"),
    ("  t:\n    image: api\n    run: x\n    outputs: [/etc/x]\n", 11, "escapes the output dir"),
    ("  t:\n    image: api\n    run: x\n    outputs: [/out]\n", 11, "escapes the output dir"),
    ("  t:\n    image: api\n    run: x\n    inputs: [../up]\n", 11, "inside the repository"),
    ("  t:\n    image: api\n    run: x\n    depends_on: [u]\n", 11, "unknown task 'u'"),
    ("  t:\n    image: api\n    run: x\n    colour: red\n", 11, "unknown key 'colour'"),
    ("  api:\n    image: api\n    run: x\n", 8, "task 'api' is defined twice"),
    (
        "  t:\n    image: api\n    run: x\n    depends_on: [u]\n"
        "  u:\n    image: api\n    run: x\n    depends_on: [t]\n",
        8,
        "task dependency cycle: t -> u -> t",
    ),
]


@pytest.mark.parametrize(("tasks", "line", "message"), CASES)
def test_bad_tasks_name_their_line(tmp_path: Path, tasks: str, line: int, message: str) -> None:
    path = write(tmp_path, tasks)
    if "api-test" not in tasks:  # the group names api-test
        path.write_text(path.read_text().replace("ci: [api-test]", "ci: [api]"))
    with pytest.raises(InputError) as caught:
        load_project(path)
    assert caught.value.where == Location(path, line)
    assert message in str(caught.value)
