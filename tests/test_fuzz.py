"""Fuzzing Dockerfiles and Buildfiles through `buildgraph plan` (parse, expand, lower, plan; no
step runs): whatever the input, no traceback, no example over the deadline, and an error is one
line `buildgraph: error: …` with an exit code from the README's table."""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildgraph.cli import main

EXIT_CODES = {0, 1, 2, 3, 4, 5, 130}  # README: Exit codes
FUZZ = settings(
    max_examples=100,
    deadline=10_000,  # ms per example: a hang guard, far above the ~50 ms one takes
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples every run: a failure here is reproducible
)
NOWHERE = "http://127.0.0.1:9"  # discard port: nothing listens, no request leaves the machine

# Pieces of words: quoting, escapes, every ${} form, heredocs, JSON brackets; now and then a
# hostile one (control characters, numbers too long for int(), deep nesting, a huge word).
PIECES = [
    *"abcAZ019/._-=:@,*?[]{}",
    " ", "\t", "$", "${", "}", "${A:-", "${A:+", "${A#", "${A%%", "${A/", "${A:?", "$$", "'", '"',
    "\\", "`", "é", "<<EOF", "<<-'X'", "[\"a\"]", "--", "A", "B", "$A", "${A}",
]  # fmt: skip
HOSTILE = ["\0", "\x7f", "\u2028", "0" * 20, "9" * 5000, "${X:-" * 80, "x" * 100_000]
FLAGS = [
    "--chmod=", "--chown=", "--from=", "--from=0", "--from=b", "--from=busybox", "--link",
    "--mount=type=cache,target=", "--mount=type=secret,id=", "--mount=type=tmpfs,target=/t,size=",
    "--mount=type=bind,source=", "--checksum=sha256:", "--interval=", "--retries=", "--network=",
    "--platform=", "--exclude=", "--keep-git-dir=", "--start-period=",
]  # fmt: skip
KEYWORDS = [
    "RUN", "COPY", "ADD", "ENV", "ARG", "LABEL", "EXPOSE", "WORKDIR", "USER", "VOLUME", "CMD",
    "ENTRYPOINT", "SHELL", "HEALTHCHECK", "ONBUILD", "STOPSIGNAL", "MAINTAINER", "frobnicate",
]  # fmt: skip

words = st.lists(st.sampled_from(PIECES * 15 + HOSTILE), max_size=8).map("".join)
NESTED = "${X:-" * 2000 + "v" + "}" * 2000
arguments = st.lists(
    st.one_of(
        words,
        st.sampled_from(["f", "dir/", "/x", f"{NOWHERE}/f", "A=1", "A=$A$A", "80", "1-3/udp"]),
        st.sampled_from(["9" * 5000, "1-" + "9" * 5000, f"A={NESTED}", "a\0b", f"{NOWHERE}:x/"]),
    ),
    max_size=4,
)
# Mostly the flags each instruction takes, sometimes any flag.
FLAGS_OF = {
    "RUN": ["--mount=type=cache,target=", "--mount=type=secret,id=", "--network=",
            "--mount=type=tmpfs,target=/t,size=", "--mount=type=bind,source="],
    "COPY": ["--chmod=", "--chown=", "--from=", "--from=0", "--from=b", "--link", "--exclude="],
    "ADD": ["--chmod=", "--chown=", "--checksum=sha256:", "--keep-git-dir=", "--link"],
    "HEALTHCHECK": ["--interval=", "--retries=", "--start-period="],
}  # fmt: skip
pairs = st.lists(st.tuples(st.sampled_from(["A", "B", "a.b"]), words).map("=".join), min_size=1)
HEREDOC_TAILS = ["", "", "", " \\", "\nEOF", "\nhello $A\nEOF"]


def _arguments(keyword: str) -> st.SearchStrategy[list[str]]:
    if keyword in ("ENV", "LABEL", "ARG"):
        return st.one_of(pairs, arguments)
    least = 2 if keyword in ("COPY", "ADD") else 1
    return st.lists(arguments.map(" ".join), min_size=least, max_size=least + 2)


instruction = st.sampled_from(KEYWORDS[:-1] * 4 + KEYWORDS[-1:]).flatmap(
    lambda keyword: st.builds(
        lambda flag, args, tail: " ".join([keyword, *flag, *args]) + tail,
        st.lists(
            st.tuples(st.sampled_from(FLAGS_OF.get(keyword, []) * 8 + FLAGS), words).map("".join),
            max_size=2 if keyword in FLAGS_OF else 0,
        ),
        _arguments(keyword),
        st.sampled_from(HEREDOC_TAILS if keyword in ("RUN", "COPY", "ADD") else [""]),
    )
)
base = st.sampled_from(["FROM busybox", "FROM scratch", "FROM busybox AS b", "FROM ${BASE}"])
directive = st.sampled_from(["", "", "# escape=`\n", "# syntax=docker/dockerfile:1\n", "\ufeff"])
dockerfiles = st.builds(
    lambda head, args, first, body, second, more: (
        head
        + "".join(f"ARG {arg}\n" for arg in args)
        + "\n".join([first, *body, *([second, *more] if second else [])])
        + "\n"
    ),
    directive,
    st.lists(st.sampled_from(["BASE=busybox", "A", "A=1", "A=${A}${A}"]), max_size=2),
    base,
    st.lists(instruction, max_size=8),
    st.sampled_from(["", "", "FROM b", "FROM 0", "FROM scratch AS c"]),
    st.lists(instruction, max_size=3),
)

# Buildfiles: real keys and near misses, values of every YAML type, then raw mutations; a RAW
# value is replaced by YAML text as written (unquoted numbers, dates, deep nesting, aliases).
RAW = "RAWVALUE"
RAW_TEXT = [
    "9" * 5000, "2024-13-45", "[" * 500 + "]" * 500, "*nowhere", "&a [*a]", "!!binary x",
    "\"a\\0b\"", "{a: " * 500 + "1" + "}" * 500, "0o99", ".inf",
]  # fmt: skip
scalars = st.one_of(
    words,
    st.sampled_from(["app", ".", "Dockerfile", "${REGISTRY}", "$$", "max", "min", "linux/amd64"]),
    st.integers(),
    st.booleans(),
    st.none(),
    st.sampled_from(["9" * 5000, "2024-13-45", "1e999", "0x1F", "~", "NaN"]),
    st.just(RAW),
)
TARGET_KEYS = ["context", "dockerfile", "tags", "args", "target", "depends_on", "contexts",
               "platform", "secrets", "push", "outputs", "contxt"]  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from([*TARGET_KEYS, "A", "base"]), inner, max_size=3),
    ),
    max_leaves=12,
)
targets = st.dictionaries(
    st.sampled_from(["app", "base", "App"] * 4 + ["x y"]),
    st.one_of(st.dictionaries(st.sampled_from(TARGET_KEYS), values, max_size=4), values),
    min_size=1,
    max_size=3,
)
documents = st.fixed_dictionaries(
    {"version": st.sampled_from([1] * 8 + [2, "1"]), "targets": targets},
    optional={
        "vars": st.dictionaries(st.sampled_from(["REGISTRY", "A", "1x"]), scalars, max_size=2),
        "groups": st.dictionaries(st.sampled_from(["default", "all"]), values, max_size=2),
        "cache": st.dictionaries(st.sampled_from(["dir", "mode", "remote", "x"]), scalars),
        "include": st.lists(words, max_size=2),
        "insecure_registries": values,
    },
)
MUTATIONS = ["", "", "", "", "&a ", "*a", "<<: *a", "\0", "\t", "[" * 100, "{", "- ", ": "]
buildfiles = st.builds(
    lambda doc, raw, mutation, at: _mutate(
        yaml.safe_dump(doc, sort_keys=False, width=1 << 20).replace(RAW, raw), mutation, at
    ),
    documents,
    st.sampled_from(RAW_TEXT),
    st.sampled_from(MUTATIONS),
    st.floats(0, 1),
)


def _mutate(text: str, mutation: str, at: float) -> str:
    cut = int(len(text) * at)
    return text[:cut] + mutation + text[cut:]


@pytest.fixture
def project(busybox_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A project dir with a context (f, dir/g) and a store holding busybox. Every registry
    request would go to a proxy on the discard port: none leaves the machine."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, NOWHERE)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    root = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        (root / "app/dir").mkdir(parents=True)
        (root / "app/f").write_text("f\n")
        (root / "app/dir/g").write_text("g\n")
        shutil.copytree(busybox_cache, root / "cache", symlinks=True)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def plan(root: Path) -> tuple[int, str]:
    argv = ["plan", "-f", str(root / "Buildfile.yaml"), "--cache-dir", str(root / "cache")]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([*argv, "--registry-timeout", "1"])  # an exception here fails the test
    return code, err.getvalue()


def assert_one_line_error(code: int, err: str) -> None:
    assert code in EXIT_CODES, (code, err)
    lines = err.splitlines()
    assert all(line.startswith("buildgraph: ") for line in lines), err  # no traceback
    errors = [line for line in lines if line.startswith("buildgraph: error: ")]
    assert len(errors) == (0 if code == 0 else 1), err
    assert all(len(line) < 2000 for line in lines), "an error quotes megabytes of input"


@FUZZ
@given(dockerfile=dockerfiles)
def test_any_dockerfile_plans_or_fails_in_one_line(project: Path, dockerfile: str) -> None:
    (project / "app/Dockerfile").write_text(dockerfile)
    (project / "Buildfile.yaml").write_text("version: 1\ntargets:\n  app: {context: app}\n")
    assert_one_line_error(*plan(project))


@FUZZ
@given(buildfile=buildfiles)
def test_any_buildfile_plans_or_fails_in_one_line(project: Path, buildfile: str) -> None:
    (project / "app/Dockerfile").write_text("FROM busybox\nCOPY f /f\n")
    (project / "Dockerfile").write_text("FROM busybox\n")
    (project / "Buildfile.yaml").write_text(buildfile)
    assert_one_line_error(*plan(project))
