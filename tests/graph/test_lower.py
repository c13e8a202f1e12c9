"""Lowering RUN --mount from=: the mount names the tree by its key, the graph has the edge."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildgraph.errors import InputError, Location
from buildgraph.frontend.dockerfile import parse_dockerfile
from buildgraph.frontend.ignore import load_dockerignore
from buildgraph.graph.context import StatCache
from buildgraph.graph.keys import step_key
from buildgraph.graph.lower import BaseImage, BuildPlan, NamedContext, StagePlan, lower_dockerfile
from buildgraph.graph.steps import RunMount, RunStep, SourceStep, inputs_of
from buildgraph.image.config import ImageConfig, RuntimeConfig
from buildgraph.image.oci import Platform

DIGESTS = {"busybox": "a", "alpine": "b", "registry.example/tools:1": "c"}


def resolve(reference: str, where: Location | None) -> BaseImage:
    if reference not in DIGESTS:
        raise InputError(f"image {reference} not found", where)
    return BaseImage(reference, "sha256:" + DIGESTS[reference] * 64, ImageConfig())


def lower(
    context: Path, text: str, named: dict[str, NamedContext] | None = None, **build_args: str
) -> BuildPlan:
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(text)
    return lower_dockerfile(
        parse_dockerfile(dockerfile),
        target=None,
        build_args=build_args,
        context=context,
        ignore=load_dockerignore(context),
        resolve_base=resolve,
        stat_cache=StatCache(),
        platform=Platform(),
        named=named,
    )


def last_run(plan: BuildPlan) -> RunStep:
    step = plan.steps[plan.target.key]
    assert isinstance(step, RunStep)
    return step


TWO_STAGES = """FROM busybox AS build
RUN mkdir /wheels && echo w > /wheels/a.whl
FROM busybox
WORKDIR /app
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels ls /wheels
"""


def test_bind_from_a_stage_names_its_result_and_is_read_only(tmp_path: Path) -> None:
    plan = lower(tmp_path, TWO_STAGES)
    run = last_run(plan)
    build = plan.stages[0].key
    assert run.mounts == (
        RunMount("bind", "/wheels", source="/wheels", stage_key=build, readonly=True),
    )
    assert inputs_of(run) == (run.parent, build)  # the edge: the stage is built first
    assert list(plan.steps).index(build) < list(plan.steps).index(plan.target.key)


@pytest.mark.parametrize(
    ("mount", "expected"),
    [
        # BuildKit's aliases: src/source, dst/destination/target, rw/readwrite, ro/readonly;
        # bind is the default type; a stage by index; relative target under WORKDIR.
        ("from=build,src=/out,dst=/mnt", RunMount("bind", "/mnt", source="/out", readonly=True)),
        ("from=0,source=out/,destination=m,rw", RunMount("bind", "/app/m", source="/out")),
        ("from=build,target=/m,readwrite=true", RunMount("bind", "/m", source="/")),
        (
            "from=build,source=../../x/./y,target=/m",
            RunMount("bind", "/m", "", "/x/y", "", "", True),
        ),
        (
            "type=cache,from=build,source=/wheels,target=/c",
            RunMount("cache", "/c", id="/c", source="/wheels"),
        ),
        (
            "type=cache,id=pip,from=build,target=/c,uid=1",
            RunMount("cache", "/c", id="pip", source="/", uid=1),
        ),
    ],
)
def test_mount_from_options(tmp_path: Path, mount: str, expected: RunMount) -> None:
    text = TWO_STAGES.replace(
        "--mount=type=bind,from=build,source=/wheels,target=/wheels", f"--mount={mount}"
    )
    plan = lower(tmp_path, text)
    (found,) = last_run(plan).mounts
    assert found.stage_key == plan.stages[0].key
    assert found == RunMount(**{**_fields(expected), "stage_key": found.stage_key})


def _fields(mount: RunMount) -> dict[str, object]:
    return {name: getattr(mount, name) for name in RunMount.__dataclass_fields__}


def test_bind_and_cache_from_an_image(tmp_path: Path) -> None:
    text = (
        "FROM busybox\n"
        "RUN --mount=from=registry.example/tools:1,source=/bin,target=/tools"
        " --mount=type=cache,from=alpine,target=/c true\n"
    )
    plan = lower(tmp_path, text)
    tools, cache = last_run(plan).mounts
    sources = {step.image: key for key, step in plan.steps.items() if isinstance(step, SourceStep)}
    assert (tools.stage_key, tools.source) == (sources["registry.example/tools:1"], "/bin")
    assert cache.stage_key == sources["alpine"]
    run = last_run(plan)
    assert run.parent == sources["busybox"]
    assert inputs_of(run) == (run.parent, sources["registry.example/tools:1"], sources["alpine"])


def test_the_stage_and_the_source_path_are_in_the_key(tmp_path: Path) -> None:
    before = last_run(lower(tmp_path, TWO_STAGES)).mounts
    changed_stage = lower(tmp_path, TWO_STAGES.replace("echo w", "echo w2"))
    changed_path = lower(tmp_path, TWO_STAGES.replace("source=/wheels", "source=/wheels/"))
    other_path = lower(tmp_path, TWO_STAGES.replace("source=/wheels", "source=/whl"))
    keys = [
        step_key(last_run(plan))
        for plan in (lower(tmp_path, TWO_STAGES), changed_stage, other_path)
    ]
    assert len(set(keys)) == 3
    assert last_run(changed_path).mounts == before  # "/wheels/" is the same path
    image = TWO_STAGES.replace("from=build", "from=alpine")
    alpine = step_key(last_run(lower(tmp_path, image)))
    DIGESTS["alpine"] = "d"
    try:
        assert step_key(last_run(lower(tmp_path, image))) != alpine  # a new image digest
    finally:
        DIGESTS["alpine"] = "b"


def test_mount_options_from_variables(tmp_path: Path) -> None:
    text = (
        "ARG KIND=bind\n"
        "FROM busybox AS build\n"
        "FROM busybox\n"
        "ARG KIND DEST=/w\n"
        "ENV CACHE=cache ID=pip\n"
        "RUN --mount=type=$KIND,from=build,target=$DEST"
        " --mount=type=$CACHE,id=${ID}-1,from=build,target=/c true\n"
    )
    plan = lower(tmp_path, text)
    bind, cache = last_run(plan).mounts
    assert (bind.type, bind.target, bind.stage_key) == ("bind", "/w", plan.stages[0].key)
    assert (cache.type, cache.id) == ("cache", "pip-1")
    assert last_run(lower(tmp_path, text, KIND="tmpfs")).mounts[0] == RunMount("tmpfs", "/w")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (  # a later stage (BuildKit: "stage needs to be defined before current command")
            "FROM busybox AS a\nRUN --mount=from=later,target=/x true\nFROM busybox AS later\n"
            "FROM a\n",
            2,
            "RUN --mount from=later: a stage can only use an earlier stage",
        ),
        (  # the stage itself
            "FROM busybox AS me\nRUN true\nRUN --mount=type=cache,from=me,target=/x true\n",
            3,
            "a stage can only use an earlier stage",
        ),
        (  # not a stage: an image reference, as in BuildKit; here none of that name exists
            "FROM busybox AS build\nFROM busybox\n\nRUN --mount=from=biuld,target=/x true\n",
            4,
            "image biuld not found",
        ),
        (
            "FROM busybox\nARG S=build\nRUN --mount=from=$S,target=/x true\n",
            3,
            "'from' doesn't support variable expansion, define alias stage instead",
        ),
        (
            "FROM busybox\nRUN --mount=type=secret,id=x,from=busybox true\n",
            2,
            "secret mount should not have a from",
        ),
    ],
)
def test_bad_mount_from_names_its_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        lower(tmp_path, text)
    assert caught.value.where == Location(tmp_path / "Dockerfile", line)


def test_mount_from_a_buildfile_context(tmp_path: Path) -> None:
    text = "FROM busybox\nRUN --mount=from=deps,target=/d --mount=from=tools,target=/t true\n"
    other = StagePlan(0, "deps", "k" * 32, RuntimeConfig(), "", Platform())
    named = {"deps": NamedContext(stage=other), "tools": NamedContext(image="alpine")}
    plan = lower(tmp_path, text, named)
    deps, tools = last_run(plan).mounts
    assert deps.stage_key == "k" * 32
    assert plan.steps[tools.stage_key] == SourceStep("alpine", "sha256:" + "b" * 64, "linux/amd64")
    with pytest.raises(InputError, match="a directory context cannot be mounted yet") as caught:
        lower(tmp_path, text, {"deps": NamedContext(directory=str(tmp_path))})
    assert caught.value.where == Location(tmp_path / "Dockerfile", 2)
