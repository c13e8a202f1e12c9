"""`buildgraph affected --since` with tasks: inputs, image or definition changed, and users."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runs import git_repo

from buildgraph.cli import main

BUILDFILE = """version: 1
targets:
  api:
    context: services/api
  web:
    context: services/web
tasks:
  api-test:
    image: api
    run: pytest
    inputs: ["services/api/tests/**"]
  web-lint:
    image: web
    run: lint
    inputs: ["services/web/*.js"]
  report:
    image: web
    run: report
    depends_on: [api-test]
"""
FILES = {
    "Buildfile.yaml": BUILDFILE,
    "services/api/Dockerfile": "FROM busybox\nCOPY app.py /\n",
    "services/api/app.py": "print('api')\n",
    "services/api/tests/test_app.py": "def test(): pass\n",
    "services/web/Dockerfile": "FROM busybox\nCOPY index.html /\n",
    "services/web/.dockerignore": "*.js\n",
    "services/web/index.html": "<h1>web</h1>\n",
    "services/web/app.js": "1\n",
    "docs/notes.txt": "notes\n",
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = git_repo(tmp_path / "repo", FILES)
    return root


CASES = [
    ("docs/notes.txt", "x", []),
    # in the image's context too (affected counts every file a context does not ignore)
    ("services/api/tests/test_app.py", "x", ["api", "api-test", "report"]),
    ("services/api/app.py", "x", ["api", "api-test", "report"]),  # the image
    ("services/web/app.js", "x", ["web-lint"]),  # ignored by the image; the task's input
    ("Buildfile.yaml", BUILDFILE.replace("run: lint", "run: lint --strict"), ["web-lint"]),
]


@pytest.mark.parametrize(("path", "text", "expected"), CASES)
def test_affected_lists_the_tasks_a_change_reaches(
    repo: Path, capsys, path: str, text: str, expected: list[str]
) -> None:
    target = repo / path
    target.write_text(text if path == "Buildfile.yaml" else target.read_text() + text)
    assert main(["affected", "-f", str(repo / "Buildfile.yaml"), "--since", "HEAD"]) == 0
    assert capsys.readouterr().out.split() == expected
