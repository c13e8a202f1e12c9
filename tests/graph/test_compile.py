"""Compiling a Buildfile: facts are gathered once, then compiling reads nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from buildgraph.errors import InputError, Location
from buildgraph.frontend.buildfile import load_project
from buildgraph.graph.compile import compile_project, gather_and_compile, gather_facts
from buildgraph.graph.context import StatCache
from buildgraph.graph.facts import LiveFacts
from buildgraph.graph.plans import BaseImage
from buildgraph.graph.steps import CopyStep, SourceStep
from buildgraph.image.config import ImageConfig, RuntimeConfig
from buildgraph.image.oci import Platform

BUILDFILE = """version: 1
targets:
  base:
    context: base
    tags: ["example.test/base:1"]
  app:
    context: app
"""
BASE_DOCKERFILE = "FROM busybox\nENV WHERE=/srv\nCOPY base.txt /base.txt\n"
# FROM the base target's tag: the base target's result, never a registry copy.
APP_DOCKERFILE = "FROM example.test/base:1\nCOPY app.txt ${WHERE}/app.txt\n"


def resolver_for(asked: list[str]):
    def resolver(platform: Platform):
        def resolve(reference: str, where: Location | None) -> BaseImage:
            asked.append(reference)
            config = ImageConfig(config=RuntimeConfig(env=("PATH=/bin",)))
            return BaseImage(f"docker.io/library/{reference}:latest", "sha256:" + "a" * 64, config)

        return resolve

    return resolver


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "Buildfile.yaml").write_text(BUILDFILE)
    for name, text in (("base", BASE_DOCKERFILE), ("app", APP_DOCKERFILE)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "Dockerfile").write_text(text)
        (tmp_path / name / f"{name}.txt").write_text(name)
    return tmp_path


def live(asked: list[str]) -> LiveFacts:
    return LiveFacts(resolver_for=resolver_for(asked), fetch_url=None, stat_cache=StatCache())


def test_facts_are_gathered_once_and_compiling_reads_nothing_else(repo: Path) -> None:
    project = load_project(repo / "Buildfile.yaml", env={})
    asked: list[str] = []
    facts = gather_facts(project, ["app"], live(asked))
    assert asked == ["busybox"]  # app's FROM is the base target, lowered before it
    assert set(facts.dockerfiles) == {str(repo / "base/Dockerfile"), str(repo / "app/Dockerfile")}
    first = compile_project(project, ["app"], facts)
    shutil.rmtree(repo / "base")  # Dockerfiles and context files: the facts have them
    shutil.rmtree(repo / "app")
    again = compile_project(project, ["app"], facts)
    assert list(first.plans) == ["base", "app"] == list(again.plans)
    assert {n: p.steps for n, p in first.plans.items()} == {
        n: p.steps for n, p in again.plans.items()
    }
    assert asked == ["busybox"]


def test_the_compilation_that_gathers_is_the_one_the_facts_give(repo: Path) -> None:
    project = load_project(repo / "Buildfile.yaml", env={})
    (repo / "app/Dockerfile").write_text("FROM example.test/base:1\nARG UNUSED\nRUN true\n")
    facts, gathered = gather_and_compile(project, ["app"], live([]))
    compiled = compile_project(project, ["app"], facts)
    assert gathered == compiled
    assert list(compiled.plans) == ["base", "app"]


def test_a_target_from_another_targets_tag_starts_from_its_result(repo: Path) -> None:
    project = load_project(repo / "Buildfile.yaml", env={})
    compiled = compile_project(project, ["app"], gather_facts(project, ["app"], live([])))
    base, app = compiled.plans["base"], compiled.plans["app"]
    copy = app.steps[app.target.key]
    assert isinstance(copy, CopyStep)
    assert copy.parent == base.target.key
    assert copy.dest == "/srv/app.txt"  # the base target's ENV, seen through the facts
    # app has no FROM step of its own (no pull of the tag); its first step follows base's.
    assert not any(isinstance(step, SourceStep) for step in app.steps.values())
    assert any(isinstance(step, SourceStep) for step in base.steps.values())


def test_targets_that_name_each_other_are_a_cycle(repo: Path) -> None:
    (repo / "base/Dockerfile").write_text("FROM example.test/app:1\n")
    (repo / "Buildfile.yaml").write_text(BUILDFILE + '    tags: ["example.test/app:1"]\n')
    project = load_project(repo / "Buildfile.yaml", env={})
    with pytest.raises(
        InputError, match="targets depend on each other in a cycle: app -> base -> app"
    ):
        gather_facts(project, ["app"], live([]))


def test_a_missing_dockerfile_names_the_target(repo: Path) -> None:
    project = load_project(repo / "Buildfile.yaml", env={})
    (repo / "app/Dockerfile").unlink()  # after the Buildfile was read (it checks too)
    with pytest.raises(InputError, match=r"target app: Dockerfile .*app/Dockerfile not found"):
        gather_facts(project, ["app"], live([]))
