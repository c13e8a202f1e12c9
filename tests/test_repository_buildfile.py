"""The repository's own Buildfile: `buildgraph run` builds the seed target only; the executor
image is a target of its own (scripts/build-executor-image.sh builds it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from buildgraph.frontend.buildfile import load_project, select_targets

REPO = Path(__file__).resolve().parent.parent


def test_the_default_group_is_the_seed_and_executor_is_a_target() -> None:
    project = load_project(REPO / "Buildfile.yaml")
    assert select_targets(project, []) == ("workspace",)
    assert select_targets(project, ["executor"]) == ("executor",)
    executor = project.target("executor")
    assert executor.context == REPO / "executor"
    assert (REPO / "executor/Dockerfile").is_file()


def test_the_default_group_runs_a_real_task_in_the_workspace_image() -> None:
    project = load_project(REPO / "Buildfile.yaml")
    task = dict(project.tasks)["tool-versions"]
    assert (task.image, task.stage, task.outputs) == ("workspace", None, ("versions.txt",))
    assert "curl --version" in task.argv[-1] and "wget --version" in task.argv[-1]
    assert "tool-versions" in dict(project.groups)["default"]


def test_build_executor_image_script_refuses_bad_arguments() -> None:
    for argv in (["--push"], ["--bogus"], ["--push", "a", "b"], ["--push", ""]):
        done = subprocess.run(
            [str(REPO / "scripts/build-executor-image.sh"), *argv], capture_output=True, text=True
        )
        assert done.returncode == 2, argv
        assert done.stderr == "usage: scripts/build-executor-image.sh [--push REF]\n"
