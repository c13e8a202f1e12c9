"""ARG/ENV scoping: what each instruction sees, FROM expansion, unused build args."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from buildgraph.errors import InputError, Location
from buildgraph.frontend import instructions as ins
from buildgraph.frontend.dockerfile import Dockerfile, parse_dockerfile
from buildgraph.frontend.scope import (
    ResolvedInstruction,
    resolve_stage,
    resolve_stages,
)


def parse(tmp_path: Path, text: str) -> Dockerfile:
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    return parse_dockerfile(path)


def walk(
    tmp_path: Path,
    text: str,
    build_args: Mapping[str, str] | None = None,
    *,
    stage: int = 0,
    base_env: tuple[str, ...] = (),
) -> tuple[ResolvedInstruction, ...]:
    dockerfile = parse(tmp_path, text)
    resolved = resolve_stages(dockerfile, build_args or {})
    result = resolve_stage(
        dockerfile.stages[stage], base_env, resolved.scope, build_args or {},
        escape=dockerfile.escape,
    )  # fmt: skip
    return result.instructions


def seen_by_last(tmp_path: Path, text: str, build_args: Mapping[str, str] | None = None) -> dict:
    return walk(tmp_path, text + "RUN true\n", build_args)[-1].visible()


# (Dockerfile, build args, what the final RUN sees)
SCOPE_CASES = [
    # a global ARG is not visible in a stage until re-declared
    ("ARG V=1\nFROM busybox\n", {}, {}),
    ("ARG V=1\nFROM busybox\nARG V\n", {}, {"V": "1"}),
    ("ARG V=1\nFROM busybox\nARG V\n", {"V": "2"}, {"V": "2"}),
    # build args override ARG defaults
    ("FROM busybox\nARG V=1\n", {"V": "9"}, {"V": "9"}),
    ("FROM busybox\nARG V\n", {}, {}),
    ("FROM busybox\nARG V\n", {"V": ""}, {"V": ""}),
    # a stage default beats the global value
    ("ARG V=1\nFROM busybox\nARG V=2\n", {}, {"V": "2"}),
    # ENV beats ARG of the same name, whichever comes first
    ("FROM busybox\nARG V=arg\nENV V=env\n", {"V": "build"}, {"V": "env"}),
    ("FROM busybox\nENV V=env\nARG V=arg\n", {"V": "build"}, {"V": "env"}),
    # defaults refer to earlier ARGs and ENVs
    ("FROM busybox\nARG A=x\nARG B=${A}y\n", {}, {"A": "x", "B": "xy"}),
    ("FROM busybox\nARG A=x\nARG B=${A}y\n", {"A": "z"}, {"A": "z", "B": "zy"}),
    ("FROM busybox\nENV P=/opt\nARG D=$P/bin\n", {}, {"P": "/opt", "D": "/opt/bin"}),
    # ENV expands its values with the scope before it, all pairs at once
    ("FROM busybox\nENV A=1\nENV A=2 B=$A\n", {}, {"A": "2", "B": "1"}),
    ("FROM busybox\nARG V=1\nENV E=v$V\n", {}, {"V": "1", "E": "v1"}),
    ("FROM busybox\nENV Q=\"a b\" R='$x'\n", {}, {"Q": "a b", "R": "$x"}),
    ("FROM busybox\nENV L some words\n", {}, {"L": "some words"}),
    # platform args need an ARG line in the stage, then carry the platform
    ("FROM busybox\n", {}, {}),
    ("FROM busybox\nARG TARGETARCH TARGETOS\n", {}, {"TARGETARCH": "amd64", "TARGETOS": "linux"}),
    # global defaults chain and see build args
    ("ARG A=1\nARG B=$A-2\nFROM busybox\nARG B\n", {"A": "7"}, {"B": "7-2"}),
]


@pytest.mark.parametrize(("text", "build_args", "expected"), SCOPE_CASES)
def test_scope(tmp_path: Path, text: str, build_args: dict, expected: dict) -> None:
    assert seen_by_last(tmp_path, text, build_args) == expected


def test_base_image_env_is_an_input(tmp_path: Path) -> None:
    steps = walk(
        tmp_path,
        "FROM python\nARG PATH=/nope\nENV PIP=$PYTHON_VERSION\nWORKDIR $HOME/app\n",
        base_env=("PATH=/usr/bin", "PYTHON_VERSION=3.11", "HOME=/root"),
    )
    workdir = steps[-1]
    assert workdir.visible()["PATH"] == "/usr/bin"  # image ENV beats ARG
    assert workdir.visible()["PIP"] == "3.11"
    assert workdir.instruction.path == "/root/app"
    assert dict(workdir.args) == {"PATH": "/nope"}


def test_stages_are_independent(tmp_path: Path) -> None:
    text = "FROM busybox AS a\nARG X=1\nENV Y=2\nFROM busybox\nRUN true\n"
    assert walk(tmp_path, text, stage=1)[0].visible() == {}


def test_expanded_instructions(tmp_path: Path) -> None:
    steps = walk(
        tmp_path,
        "FROM busybox\n"
        "ARG D=/dst U=app PORT=80 M=cache\n"
        "COPY --chown=$U:$U --from=${M} src/${U} ${D}/\n"
        "ADD --checksum=${D} a $D\n"
        "EXPOSE $PORT ${PORT}1/udp\n"
        "VOLUME $D /x\n"
        "USER ${U}\n"
        'LABEL ${U}.name="${U} x"\n'
        "STOPSIGNAL SIG${U}\n"
        "RUN --mount=type=cache,target=/${M} echo $D\n"
        "CMD echo $D\n"
        "COPY <<A <<'B' /f\n$U \"q\"\nA\n$U\nB\n",
    )
    copy, add, expose, volume, user, label, signal, run, cmd, heredoc = (
        step.instruction for step in steps[1:]
    )
    assert (copy.chown, copy.from_, copy.sources, copy.dest) == (
        "app:app",
        "cache",
        ("src/app",),
        "/dst/",
    )
    assert (add.checksum, add.dest) == ("/dst", "/dst")
    assert expose.ports == ("80", "801/udp")
    assert volume.paths == ("/dst", "/x")
    assert user.user == "app"
    assert label.pairs == (("app.name", "app x"),)
    assert signal.signal == "SIGapp"
    assert run.command == ("echo $D",) and run.mounts[0].target == "/cache"
    assert cmd.command == ("echo $D",)
    assert [doc.content for doc in heredoc.heredocs] == ['app "q"\n', "$U\n"]


def test_arg_instruction_carries_resolved_values(tmp_path: Path) -> None:
    steps = walk(tmp_path, "ARG G=g\nFROM busybox\nARG G A=${G}x B\n", {"A": "b"})
    arg = steps[0].instruction
    assert isinstance(arg, ins.Arg)
    assert arg.pairs == (("G", "g"), ("A", "b"), ("B", None))


def test_from_expansion_and_stage_references(tmp_path: Path) -> None:
    dockerfile = parse(
        tmp_path,
        "ARG BASE=alpine\nARG TAG\n"
        "FROM ${BASE}:${TAG:-3.19} AS build\n"
        "FROM --platform=$TARGETPLATFORM build\n"
        "FROM scratch\n"
        "FROM 0\n",
    )
    resolved = resolve_stages(dockerfile, {"TAG": "edge"}, target_platform="linux/arm64")
    first, second, third, fourth = resolved.bases
    assert (first.base.image, first.image, first.base_stage) == ("alpine:edge", "alpine:edge", None)
    assert (second.base_stage, second.base.platform, second.image) == (0, "linux/arm64", None)
    assert third.scratch and not first.scratch
    assert fourth.base_stage == 0
    assert dict(resolved.scope.args) == {"BASE": "alpine", "TAG": "edge"}


def test_from_does_not_see_stage_args(tmp_path: Path) -> None:
    dockerfile = parse(tmp_path, "FROM busybox\nARG IMG=alpine\nFROM ${IMG:-debian}\n")
    assert resolve_stages(dockerfile, {}).bases[1].image == "debian"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("ARG IMG\nFROM $IMG\n", 2),
        ("FROM busybox\nRUN true\nFROM ${NOPE}\n", 3),
        ("ARG V=${X:?need X}\nFROM busybox\n", 1),
        ("FROM ${X:?needX}\n", 1),
    ],
)
def test_from_errors_name_the_line(tmp_path: Path, text: str, line: int) -> None:
    dockerfile = parse(tmp_path, text)
    with pytest.raises(InputError) as caught:
        resolve_stages(dockerfile, {})
    assert caught.value.where == Location(tmp_path / "Dockerfile", line)


def test_expansion_error_in_stage_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        walk(tmp_path, "FROM busybox\nRUN true\nWORKDIR ${DIR:?set DIR}\n")
    assert caught.value.where == Location(tmp_path / "Dockerfile", 3)


def test_unused_build_args(tmp_path: Path) -> None:
    dockerfile = parse(tmp_path, "ARG A\nFROM busybox\nARG B=1\n")
    args = {"A": "1", "B": "2", "C": "3", "HTTP_PROXY": "http://p", "TARGETOS": "linux"}
    resolved = resolve_stages(dockerfile, args)
    assert resolved.unused_build_args == ("C",)
    assert resolved.scope.proxy == (("HTTP_PROXY", "http://p"),)


def test_run_mount_options_expand_before_they_are_read(tmp_path: Path) -> None:
    # buildkit testMountArg, testMountEnvVar, testMountEnvAcrossStages, testMountMetaArg
    steps = walk(
        tmp_path,
        "ARG META=/tmp/meta\n"
        "FROM busybox\n"
        "ARG META MT=TmpFS SIZE=1m\n"
        "ENV MNT_ID=mycache MNT_TYPE2=cache\n"
        "RUN --mount=type=$MT,target=/t,size=$SIZE --mount=type=$MNT_TYPE2,id=$MNT_ID,target=$META"
        " --mount=type=cache,target=/c,mode=0$MODE,uid=${UID:-7} true\n",
        {"MODE": "700"},  # not declared by an ARG: not visible, so mode is 0
    )
    tmpfs, cache, plain = steps[-1].instruction.mounts
    assert (tmpfs.type, tmpfs.target, tmpfs.size) == ("tmpfs", "/t", 1024 * 1024)
    assert (cache.type, cache.id, cache.target) == ("cache", "mycache", "/tmp/meta")
    assert (plain.mode, plain.uid) == (0, 7)


def test_run_mount_variables_are_read_at_parse_time_when_there_are_none(tmp_path: Path) -> None:
    dockerfile = parse(
        tmp_path, "FROM busybox\nARG MT=tmpfs\nRUN --mount=type=$MT,target=/t true\n"
    )
    (later,) = dockerfile.stages[0].instructions[1:]
    assert isinstance(later, ins.Run) and later.mounts[0].type == "$MT"  # read once expanded
    with pytest.raises(InputError, match="unsupported mount type 'tmp'") as caught:
        parse(tmp_path, "FROM busybox\nRUN --mount=type=tmp,target=/t true\n")
    assert caught.value.where == Location(tmp_path / "Dockerfile", 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ARG MT=bogus\nRUN --mount=type=$MT,target=/t true\n", "unsupported mount type 'bogus'"),
        ("ARG M=x\nRUN --mount=type=cache,target=/c,mode=$M true\n", "invalid number 'x'"),
        ("ENV T=\nRUN --mount=type=cache,target=$T true\n", "cache mount needs a target"),
        ("ARG NOPE\nRUN --mount=type=tmpfs,target=${NOPE:?need-NOPE} true\n", "need-NOPE"),
    ],
)
def test_run_mount_errors_after_expansion_name_the_line(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(InputError, match=message) as caught:
        walk(tmp_path, "FROM busybox\n" + text)
    assert caught.value.where == Location(tmp_path / "Dockerfile", 3)


def test_run_mount_from_does_not_expand(tmp_path: Path) -> None:
    # buildkit testMountFromError: "define alias stage instead"
    text = "FROM busybox AS test\nFROM busybox\nENV ttt=test\nRUN --mount=from=$ttt,target=/t ls\n"
    with pytest.raises(InputError, match="'from' doesn't support variable expansion") as caught:
        parse(tmp_path, text)
    assert caught.value.where == Location(tmp_path / "Dockerfile", 4)
