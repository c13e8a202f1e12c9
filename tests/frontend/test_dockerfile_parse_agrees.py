"""Differential test: our parser and dockerfile-parse agree on where each instruction starts,
its keyword and its arguments (continuations joined), for every Dockerfile in the tests and
examples that has no heredoc (dockerfile-parse has none). Where they differ, BuildKit is
right and we follow it: those cases are listed below with the reason."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from buildgraph.frontend.dockerfile import parse_dockerfile

ROOT = Path(__file__).resolve().parents[2]
Instructions = list[tuple[int, str, str]]  # (1-based first line, KEYWORD, arguments)


def _dockerfiles() -> list[Path]:
    found = (path for top in ("tests", "examples") for path in (ROOT / top).rglob("Dockerfile*"))
    return sorted(path for path in found if path.is_file() and b"<<" not in path.read_bytes())


def ours(path: Path, text: str) -> Instructions:
    dockerfile = parse_dockerfile(path, text)
    instructions = [*dockerfile.global_args]
    for stage in dockerfile.stages:
        instructions += [stage.base, *stage.instructions]
    result = []
    for instruction in instructions:
        keyword, _, arguments = instruction.original.partition(" ")
        result.append((instruction.where.line, keyword.upper(), arguments.lstrip()))
    return result


def theirs(text: str) -> Instructions:
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    return [
        (item["startline"] + 1, item["instruction"], item["value"])  # startline is 0-based
        for item in parser.structure
        if item["instruction"] != "COMMENT"
    ]


DOCKERFILES = _dockerfiles()


def test_the_tests_have_dockerfiles_to_compare() -> None:
    assert len(DOCKERFILES) > 100


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_both_parsers_agree_on_a_dockerfile_of_the_tests(path: Path) -> None:
    text = path.read_text()
    assert ours(path, text) == theirs(text)


AGREED = {
    "comment inside a continuation": "FROM busybox\nRUN echo a \\\n# inside\n  b\n",
    "escape directive": "# escape=`\nFROM busybox\nRUN echo a `\n  b\n",
    "lower-case keywords": "from busybox\nrun echo hi\n",
    "indented instructions": "  FROM busybox\n\tRUN echo hi\n",
    "blanks after the backslash": "FROM busybox\nRUN echo a \\   \n  b\n",
    "ONBUILD": "FROM busybox\nONBUILD RUN echo x\n",
    "JSON form over two lines": 'FROM busybox\nCMD ["a", \\\n "b"]\n',
    "CRLF line ends": "FROM busybox\r\nRUN echo a \\\r\n  b\r\n",
    "tab after a continuation": "FROM busybox\nENV A=1\\\n\tB=2\n",
    "indented comment": "FROM busybox\n# c\nRUN a\n   # indented comment\nRUN b\n",
}


@pytest.mark.parametrize("text", AGREED.values(), ids=AGREED.keys())
def test_both_parsers_agree_on_tricky_lines(tmp_path: Path, text: str) -> None:
    assert ours(tmp_path / "Dockerfile", text) == theirs(text)


# Where dockerfile-parse differs from BuildKit (and so from us), with what BuildKit does.
DIFFERENT = {
    # BuildKit skips an empty line inside a continuation (with a deprecation warning);
    # dockerfile-parse ends the instruction there and reads "b" as an instruction.
    "empty line in a continuation": (
        "FROM busybox\nRUN echo a \\\n\n  b\n",
        [(1, "FROM", "busybox"), (2, "RUN", "echo a   b")],
    ),
    # BuildKit keeps an instruction whose last line ends in a backslash; dockerfile-parse
    # drops it.
    "continuation at the end of the file": (
        "FROM busybox\nRUN echo a \\\n",
        [(1, "FROM", "busybox"), (2, "RUN", "echo a")],
    ),
}


@pytest.mark.parametrize(("text", "expected"), DIFFERENT.values(), ids=DIFFERENT.keys())
def test_known_differences_follow_buildkit(
    tmp_path: Path, text: str, expected: Instructions
) -> None:
    assert ours(tmp_path / "Dockerfile", text) == expected
    assert theirs(text) != expected
