"""`buildgraph affected`: changed files since a git ref → targets, and the targets built on them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_runs import git, git_repo

from buildgraph.commands.affected import affected_targets, render_affected
from buildgraph.errors import InputError
from buildgraph.frontend.buildfile import load_project

BUILDFILE = """version: 1
vars: {REGISTRY: "localhost:5000/acme", PY: "3.11"}
include: ["services/*/Buildfile.yaml"]
groups: {default: [api, web]}
cache: {dir: base/cache}  # inside a context, not git-ignored: still no target's input
targets:
  base:
    context: base
    tags: ["${REGISTRY}/base:latest"]
  api:
    context: services/api
    args: {MODE: fast}
    contexts: {base: "target:base", shared: shared}
  web:
    context: services/web
"""
WORKER_BUILDFILE = """version: 1
targets:
  worker:
    context: .
    dockerfile: ../../dockerfiles/worker.Dockerfile
    args: {PY: "${PY}"}
"""
FILES = {
    "Buildfile.yaml": BUILDFILE,
    ".gitignore": "*.log\n",
    "base/Dockerfile": "FROM busybox\nCOPY setup.sh /\n",
    "base/.dockerignore": "*.md\n",
    "base/setup.sh": "echo base\n",
    "base/README.md": "the base image\n",
    "services/api/Dockerfile": "FROM base\nCOPY --from=shared lib.py /\nCOPY app.py /\n",
    "services/api/app.py": "print('api')\n",
    "services/web/Dockerfile": (
        "ARG REGISTRY=localhost:5000/acme\nFROM ${REGISTRY}/base:latest\nCOPY index.html /\n"
    ),
    "services/web/index.html": "<h1>web</h1>\n",
    "services/worker/Buildfile.yaml": WORKER_BUILDFILE,
    "services/worker/job.py": "print('work')\n",
    "dockerfiles/worker.Dockerfile": "FROM busybox\nCOPY job.py /\n",
    "shared/lib.py": "LIB = 1\n",
    "docs/notes.txt": "notes\n",
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = git_repo(tmp_path / "repo", FILES)
    git(root, "tag", "start")
    return root


def edit(name: str, text: str | None = None) -> Callable[[Path], None]:
    """Append `text` (default: a line) to the file `name`, creating it if need be."""

    def change(root: Path) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as file:
            file.write(text if text is not None else "# changed\n")

    return change


def replace(name: str, old: str, new: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        path = root / name
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new))

    return change


def delete(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).unlink()


def committed(change: Callable[[Path], None]) -> Callable[[Path], None]:
    def commit(root: Path) -> None:
        change(root)
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "change")

    return commit


def staged(change: Callable[[Path], None]) -> Callable[[Path], None]:
    def stage(root: Path) -> None:
        change(root)
        git(root, "add", "-A")

    return stage


CASES = [
    ("nothing changed", lambda root: None, ()),
    ("file the .dockerignore drops", edit("base/README.md"), ()),
    ("file in no context", edit("docs/notes.txt"), ()),
    ("git-ignored untracked file", edit("base/build.log"), ()),
    ("the cache dir", edit("base/cache/blobs/sha256/0123"), ()),
    ("base context file", edit("base/setup.sh"), ("api", "base", "web")),
    ("base file, committed", committed(edit("base/setup.sh")), ("api", "base", "web")),
    ("base file, staged", staged(edit("base/setup.sh")), ("api", "base", "web")),
    ("only a service", edit("services/web/index.html"), ("web",)),
    ("Dockerfile", edit("services/api/Dockerfile"), ("api",)),
    ("base Dockerfile", edit("base/Dockerfile"), ("api", "base", "web")),
    ("the .dockerignore itself", edit("base/.dockerignore", "!README.md\n"),
     ("api", "base", "web")),
    ("Dockerfile outside the context", edit("dockerfiles/worker.Dockerfile"), ("worker",)),
    ("untracked new file", edit("services/api/new.py"), ("api",)),
    ("untracked new file, ignored", edit("base/NEW.md"), ()),
    ("deleted file", delete("services/web/index.html"), ("web",)),
    ("deleted file, committed", committed(delete("services/api/app.py")), ("api",)),
    ("directory context", edit("shared/lib.py"), ("api",)),
    ("one target's args", replace("Buildfile.yaml", "MODE: fast", "MODE: slow"), ("api",)),
    ("base target's tags", replace("Buildfile.yaml", "base:latest", "base:v2"), ("api", "base")),
    ("Buildfile comment only", edit("Buildfile.yaml", "# a comment\n"), ()),
    ("Buildfile group only", replace("Buildfile.yaml", "[api, web]", "[api]"), ()),
    ("quoting only", replace("Buildfile.yaml", "MODE: fast", 'MODE: "fast"'), ()),
    ("included Buildfile", edit("services/worker/Buildfile.yaml", "    platform: linux/arm64\n"),
     ("worker",)),
    ("var used in an included file", replace("Buildfile.yaml", '"3.11"', '"3.12"'), ("worker",)),
    ("var used by a tag", replace("Buildfile.yaml", "/acme", "/other"), ("api", "base")),
    ("new target", edit("Buildfile.yaml", "  tool:\n    context: base\n"), ("tool",)),
    ("include list", replace("Buildfile.yaml", "services/*/", "services/worker/"),
     ("api", "base", "web", "worker")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_affected_targets(
    repo: Path, change: Callable[[Path], None], expected: tuple[str, ...]
) -> None:
    change(repo)
    project = load_project(repo / "Buildfile.yaml")
    assert affected_targets(project, "start") == expected


def test_names_restrict_the_answer(repo: Path) -> None:
    edit("base/setup.sh")(repo)
    edit("services/worker/job.py")(repo)
    project = load_project(repo / "Buildfile.yaml")
    assert affected_targets(project, "start") == ("api", "base", "web", "worker")
    assert affected_targets(project, "start", ["web"]) == ("base", "web")
    assert affected_targets(project, "start", ["default"]) == ("api", "base", "web")
    assert affected_targets(project, "start", ["worker"]) == ("worker",)


def test_a_buildfile_missing_at_the_ref_affects_its_targets(repo: Path) -> None:
    edit("services/cron/Dockerfile", "FROM busybox\n")(repo)
    committed(edit("services/cron/Buildfile.yaml", "version: 1\ntargets: {cron: {}}\n"))(repo)
    project = load_project(repo / "Buildfile.yaml")
    assert affected_targets(project, "start") == ("cron",)
    assert affected_targets(project, "HEAD") == ()


def test_project_in_a_subdirectory_of_the_repository(repo: Path) -> None:
    sub = repo / "product"
    (sub / "app").mkdir(parents=True)
    (sub / "app" / "Dockerfile").write_text("FROM busybox\n")
    (sub / "Buildfile.yaml").write_text("version: 1\ntargets: {app: {context: app}}\n")
    committed(lambda root: None)(repo)
    project = load_project(sub / "Buildfile.yaml")
    assert affected_targets(project, "HEAD") == ()
    edit("product/app/main.sh")(repo)
    assert affected_targets(project, "HEAD") == ("app",)


@pytest.mark.parametrize("ref", ["no-such-branch", "start~5", "--output=x", ""])
def test_unknown_ref_is_an_input_error(repo: Path, ref: str) -> None:
    project = load_project(repo / "Buildfile.yaml")
    with pytest.raises(InputError, match="unknown git ref") as caught:
        affected_targets(project, ref)
    assert caught.value.exit_code == 2
    assert "\n" not in str(caught.value)


def test_outside_a_git_repository_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM busybox\n")
    (tmp_path / "Buildfile.yaml").write_text("version: 1\ntargets: {app: {}}\n")
    project = load_project(tmp_path / "Buildfile.yaml")
    with pytest.raises(InputError, match="not a git repository") as caught:
        affected_targets(project, "main")
    assert caught.value.exit_code == 2
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("names", "output_format", "text"),
    [
        ((), "text", ""),
        (("api", "web"), "text", "api\nweb\n"),
        ((), "json", "[]\n"),
        (("api", "web"), "json", '["api", "web"]\n'),
    ],
)
def test_render(names: tuple[str, ...], output_format: str, text: str) -> None:
    assert render_affected(names, output_format) == text
    if output_format == "json":
        assert json.loads(text) == list(names)


def test_cli_outside_a_git_repository_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    from buildgraph.cli import main

    (tmp_path / "app").mkdir()
    (tmp_path / "app/Dockerfile").write_text("FROM busybox\n")
    (tmp_path / "Buildfile.yaml").write_text("version: 1\ntargets:\n  app: {context: app}\n")
    assert main(["affected", "--since", "HEAD", "-f", str(tmp_path / "Buildfile.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a git repository" in err[0]
