"""Dockerfile parsing: instructions and flags, heredocs, directives, line numbers, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildgraph.errors import InputError, Location
from buildgraph.frontend import instructions as ins
from buildgraph.frontend.dockerfile import Dockerfile, parse_dockerfile


def parse(tmp_path: Path, text: str) -> Dockerfile:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(text)
    return parse_dockerfile(dockerfile)


def only(tmp_path: Path, line: str) -> ins.Instruction:
    return parse(tmp_path, f"FROM busybox\n{line}\n").stages[0].instructions[0]


def test_stages_global_args_and_lines(tmp_path: Path) -> None:
    dockerfile = parse(
        tmp_path,
        "# syntax=docker/dockerfile:1\n"
        "ARG BASE=alpine V\n"
        "\n"
        "FROM --platform=$BUILDPLATFORM ${BASE} AS Build\n"
        "RUN make\n"
        "# a comment\n"
        "from scratch\n"
        "copy --from=build /out /out\n",
    )
    assert dockerfile.directives == (("syntax", "docker/dockerfile:1"),)
    assert dockerfile.global_args[0].pairs == (("BASE", "alpine"), ("V", None))
    first, second = dockerfile.stages
    assert (first.index, first.name, first.base.image) == (0, "build", "${BASE}")
    assert first.base.platform == "$BUILDPLATFORM"
    assert first.base.where == Location(tmp_path / "Dockerfile", 4)
    assert first.instructions[0].where.line == 5
    assert (second.name, second.base.image, second.base.where.line) == (None, "scratch", 7)
    copy = second.instructions[0]
    assert isinstance(copy, ins.Copy)
    assert (copy.from_, copy.sources, copy.dest, copy.where.line) == ("build", ("/out",), "/out", 8)


def test_read_from_path(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text("FROM busybox\n")
    assert parse_dockerfile(path).stages[0].base.image == "busybox"
    with pytest.raises(InputError) as caught:
        parse_dockerfile(tmp_path / "missing")
    assert caught.value.where == Location(tmp_path / "missing")


def test_continuation_keeps_first_line_and_skips_comments(tmp_path: Path) -> None:
    dockerfile = parse(
        tmp_path,
        "FROM busybox\n"
        "RUN apt-get update && \\\n"
        "    # comment between continuation lines\n"
        "\n"
        "    apt-get install -y curl\n"
        "USER nobody\n",
    )
    run, user = dockerfile.stages[0].instructions
    assert isinstance(run, ins.Run)
    assert run.where.line == 2
    assert run.command == ("apt-get update &&     apt-get install -y curl",)
    assert run.original == "RUN apt-get update &&     apt-get install -y curl"
    assert user.where.line == 6
    assert dockerfile.warnings  # the empty continuation line


def test_escaped_escape_is_not_a_continuation(tmp_path: Path) -> None:
    run = only(tmp_path, "RUN echo a\\\\")
    assert isinstance(run, ins.Run) and run.command == ("echo a\\\\",)


def test_backtick_escape_directive(tmp_path: Path) -> None:
    dockerfile = parse(
        tmp_path,
        "# escape=`\n\nFROM mcr.microsoft.com/windows\n"
        "RUN dir c:\\ `\n    && echo hi\nENV P=C:\\x\n",
    )
    assert dockerfile.escape == "`"
    assert dockerfile.directives == (("escape", "`"),)
    run, env = dockerfile.stages[0].instructions
    assert run.command == ("dir c:\\     && echo hi",)
    assert (run.where.line, env.where.line) == (4, 6)


def test_directives_only_at_the_top(tmp_path: Path) -> None:
    dockerfile = parse(tmp_path, "FROM busybox\n# escape=`\nRUN a \\\n b\n")
    assert dockerfile.escape == "\\" and dockerfile.directives == ()
    after_comment = parse(tmp_path, "# hello\n# escape=`\nFROM busybox\n")
    assert after_comment.escape == "\\"
    unknown_then = parse(tmp_path, "# foo=bar\n# syntax=x\nFROM busybox\n")
    assert unknown_then.directives == ()


def test_run_forms_and_flags(tmp_path: Path) -> None:
    run = only(
        tmp_path,
        "RUN --mount=type=cache,target=/root/.cache,id=pip,sharing=locked,mode=0700,uid=1,gid=2"
        " --mount=type=secret,id=token,required=true,env=TOKEN"
        " --mount=type=bind,from=build,source=/out,target=/in,rw"
        " --mount=type=tmpfs,target=/tmp,size=64m"
        " --network=none --security=insecure pip install x",
    )
    assert isinstance(run, ins.Run)
    assert run.command == ("pip install x",) and run.shell
    assert (run.network, run.security) == ("none", "insecure")
    cache, secret, bind, tmpfs = run.mounts
    assert cache == ins.Mount(
        type="cache", target="/root/.cache", id="pip", sharing="locked", mode=0o700, uid=1, gid=2
    )
    # BuildKit's convert_secrets.go: with env= and no target, the secret is no file at all
    assert (secret.target, secret.id, secret.required, secret.env) == ("", "token", True, "TOKEN")
    assert (bind.from_, bind.source, bind.target, bind.readonly) == ("build", "/out", "/in", False)
    assert ins.Mount(type="bind", target="/x").readonly is False  # the parser sets the default
    assert tmpfs.size == 64 * 1024 * 1024
    exec_form = only(tmp_path, 'RUN ["echo", "a b"]')
    assert exec_form.command == ("echo", "a b") and not exec_form.shell
    fallback = only(tmp_path, "RUN [not json")
    assert fallback.command == ("[not json",) and fallback.shell


def test_bind_mount_is_read_only_by_default(tmp_path: Path) -> None:
    run = only(tmp_path, "RUN --mount=target=/src make")
    assert run.mounts[0].type == "bind" and run.mounts[0].readonly


def test_copy_and_add_flags(tmp_path: Path) -> None:
    copy = only(
        tmp_path,
        "COPY --from=0 --chown=1:2 --chmod=644 --link --parents --exclude=*.md --exclude=x a b /d/",
    )
    assert copy == ins.Copy(
        sources=("a", "b"), dest="/d/", from_="0", chown="1:2", chmod="644", link=True,
        parents=True, exclude=("*.md", "x"), where=copy.where, original=copy.original,
    )  # fmt: skip
    add = only(
        tmp_path,
        "ADD --checksum=sha256:abc --keep-git-dir=true --link=false https://x/y.tgz /y",
    )
    assert isinstance(add, ins.Add)
    assert (add.checksum, add.keep_git_dir, add.link) == ("sha256:abc", True, False)
    json_copy = only(tmp_path, 'COPY ["a b", "/c d/"]')
    assert (json_copy.sources, json_copy.dest) == (("a b",), "/c d/")


def test_env_label_arg(tmp_path: Path) -> None:
    env = only(tmp_path, 'ENV A=1 B="two words" C=\\ x')
    assert env.pairs == (("A", "1"), ("B", '"two words"'), ("C", "\\ x"))
    legacy = only(tmp_path, "ENV NAME some value here")
    assert legacy.pairs == (("NAME", "some value here"),)
    label = only(tmp_path, 'LABEL org.opencontainers.image.title="x y" v=1')
    assert label.pairs == (("org.opencontainers.image.title", '"x y"'), ("v", "1"))
    arg = only(tmp_path, "ARG A B=2 C=")
    assert arg.pairs == (("A", None), ("B", "2"), ("C", ""))


def test_simple_instructions(tmp_path: Path) -> None:
    assert only(tmp_path, "WORKDIR /a b").path == "/a b"
    assert only(tmp_path, "USER app:app").user == "app:app"
    assert only(tmp_path, "EXPOSE 80 443/udp").ports == ("80", "443/udp")
    assert only(tmp_path, "STOPSIGNAL SIGTERM").signal == "SIGTERM"
    assert only(tmp_path, "MAINTAINER Jane <j@x>").name == "Jane <j@x>"
    assert only(tmp_path, 'VOLUME ["/data", "/logs"]').paths == ("/data", "/logs")
    assert only(tmp_path, "VOLUME /data /logs").paths == ("/data", "/logs")
    assert only(tmp_path, 'SHELL ["/bin/bash", "-c"]').command == ("/bin/bash", "-c")
    cmd = only(tmp_path, "CMD echo hi")
    assert isinstance(cmd, ins.Cmd) and cmd.command == ("echo hi",) and cmd.shell
    entry = only(tmp_path, 'ENTRYPOINT ["/init", "--"]')
    assert isinstance(entry, ins.Entrypoint) and entry.command == ("/init", "--")
    assert only(tmp_path, "ENTRYPOINT []").command == ()


def test_healthcheck(tmp_path: Path) -> None:
    check = only(
        tmp_path,
        "HEALTHCHECK --interval=1m30s --timeout=500ms --start-period=1.5s --start-interval=2s"
        " --retries=3 CMD curl -f http://localhost/",
    )
    assert check.test == ("CMD-SHELL", "curl -f http://localhost/")
    assert (check.interval, check.timeout) == (90_000_000_000, 500_000_000)
    assert (check.start_period, check.start_interval, check.retries) == (
        1_500_000_000, 2_000_000_000, 3,
    )  # fmt: skip
    assert only(tmp_path, 'HEALTHCHECK CMD ["true"]').test == ("CMD", "true")
    assert only(tmp_path, "HEALTHCHECK NONE").test == ("NONE",)


def test_onbuild_parses_its_trigger(tmp_path: Path) -> None:
    onbuild = only(tmp_path, "ONBUILD COPY --chown=1 . /app")
    assert isinstance(onbuild, ins.Onbuild) and isinstance(onbuild.trigger, ins.Copy)
    assert onbuild.expression == "COPY --chown=1 . /app"
    assert onbuild.trigger.chown == "1"


def test_heredocs(tmp_path: Path) -> None:
    dockerfile = parse(
        tmp_path,
        "FROM busybox\n"
        "RUN <<EOF\n"
        "echo $HOME\n"
        "EOF\n"
        'RUN <<-"EOT" cat <<X 3<<Y\n'
        "\tone\n"
        "\t\ttwo\n"
        "\tEOT\n"
        "x\n"
        "X\n"
        "y\n"
        "Y\n"
        "COPY <<a.txt <<'b.txt' /dst/\n"
        "A\n"
        "a.txt\n"
        "$B\n"
        "b.txt\n"
        'RUN ["echo", "<<EOF"]\n'
        "USER x\n",
    )
    first, second, copy, exec_form, user = dockerfile.stages[0].instructions
    assert first.command == ("<<EOF",)
    assert first.heredocs == (
        ins.Heredoc(name="EOF", content="echo $HOME\n", expand=True, chomp=False),
    )
    one, x, y = second.heredocs
    assert (one.name, one.content, one.expand, one.chomp) == ("EOT", "one\ntwo\n", False, True)
    assert (x.content, y.content, y.fd) == ("x\n", "y\n", 3)
    assert copy.sources == () and copy.dest == "/dst/"
    assert [(doc.name, doc.content, doc.expand) for doc in copy.heredocs] == [
        ("a.txt", "A\n", True),
        ("b.txt", "$B\n", False),
    ]
    assert exec_form.heredocs == () and exec_form.command == ("echo", "<<EOF")
    assert (copy.where.line, exec_form.where.line, user.where.line) == (13, 18, 19)


def test_heredoc_behind_onbuild(tmp_path: Path) -> None:
    onbuild = only(tmp_path, "ONBUILD RUN <<EOF\nls\nEOF")
    assert onbuild.trigger.heredocs[0].content == "ls\n"


def test_crlf_and_bom(tmp_path: Path) -> None:
    dockerfile = parse(tmp_path, "\ufeffFROM busybox\r\nRUN a \\\r\n  b\r\nUSER x\r\n")
    run, user = dockerfile.stages[0].instructions
    assert run.command == ("a   b",)
    assert user.where.line == 4


def test_stage_lookup(tmp_path: Path) -> None:
    dockerfile = parse(tmp_path, "FROM a AS One\nFROM b\nFROM c AS three\n")
    assert dockerfile.stage("ONE").index == 0
    assert dockerfile.stage("1").index == 1
    assert dockerfile.stage("three", before=2) is None
    assert dockerfile.stage("nope") is None


ERROR_CASES = [
    ("FROM busybox\nCOPY onlyone\n", 2),
    ("FROM busybox\nRUN true\nEXPOSE\n", 3),
    ("", 1),
    ("# just a comment\n\n", 2),
    ("ARG A=1\n", 1),
    ("RUN true\nFROM busybox\n", 1),
    ("FROM busybox\nFROB x\n", 2),
    ("FROM busybox\nRUN --mount=type=cache true\n", 2),
    ("FROM busybox\nRUN --bogus=1 true\n", 2),
    ("FROM busybox\nCOPY --bogus a b\n", 2),
    ("FROM busybox\nENV --x=1 A=b\n", 2),
    ("FROM busybox\nRUN --network=bridge true\n", 2),
    ("FROM busybox\nCOPY --link=maybe a b\n", 2),
    ("FROM busybox\nCOPY --from a b\n", 2),
    ("FROM busybox\nCOPY --chown=1 --chown=2 a b\n", 2),
    ("FROM busybox\nSHELL /bin/sh -c\n", 2),
    ("FROM busybox\nSHELL []\n", 2),
    ("FROM busybox\nRUN [1, 2]\n", 2),
    ("FROM busybox\nHEALTHCHECK --interval=1 CMD true\n", 2),
    ("FROM busybox\nHEALTHCHECK --interval=10us CMD true\n", 2),
    ("FROM busybox\nHEALTHCHECK --retries=0 CMD true\n", 2),
    ("FROM busybox\nHEALTHCHECK --retries=x CMD true\n", 2),
    ("FROM busybox\nHEALTHCHECK --bogus=1 CMD true\n", 2),
    ("FROM busybox\nHEALTHCHECK NONE x\n", 2),
    ("FROM busybox\nHEALTHCHECK WAT true\n", 2),
    ("FROM busybox\nHEALTHCHECK CMD\n", 2),
    ("FROM busybox\nRUN true\nRUN <<EOF\necho\n", 3),
    ("FROM a AS 1x\n", 1),
    ("FROM a AS\n", 1),
    ("FROM a b c d\n", 1),
    ("FROM busybox\nONBUILD ONBUILD RUN x\n", 2),
    ("FROM busybox\nONBUILD FROM x\n", 2),
    ("FROM busybox\nONBUILD MAINTAINER x\n", 2),
    ("FROM busybox\nONBUILD\n", 2),
    ("FROM busybox\nENV A\n", 2),
    ("FROM busybox\nENV A=1 B\n", 2),
    ("FROM busybox\nENV =1\n", 2),
    ("FROM busybox\nARG =1\n", 2),
    ("FROM busybox\nWORKDIR\n", 2),
    ("FROM busybox\nUSER\n", 2),
    ("FROM busybox\nVOLUME\n", 2),
    ("FROM busybox\nRUN \\\n  --mount=type=bogus,target=/x \\\n  true\n", 2),
    ("FROM busybox\nCOPY a <<EOF\nx\nEOF\n", 2),
    ("# escape=x\nFROM busybox\n", 1),
    ("# escape=`\n# escape=\\\nFROM busybox\n", 2),
]


@pytest.mark.parametrize(("text", "line"), ERROR_CASES)
def test_bad_dockerfile_names_its_line(tmp_path: Path, text: str, line: int) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(text)
    with pytest.raises(InputError) as caught:
        parse_dockerfile(dockerfile)
    assert caught.value.where == Location(dockerfile, line)


def test_unknown_flag_error_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--bogus") as caught:
        parse(tmp_path, "FROM busybox\n\nCOPY --bogus=1 a b\n")
    assert str(caught.value).startswith(f"{tmp_path / 'Dockerfile'}:3: ")


def test_duplicate_stage_names_warn_and_the_last_wins(tmp_path: Path) -> None:
    """BuildKit's DuplicateStageName check is a warning; a reference finds the last stage of
    that name (dockerfile2llb dispatchStates.addState overwrites statesByName)."""
    dockerfile = parse(tmp_path, "FROM a AS x\nRUN true\nFROM b AS X\nFROM x\n")
    assert dockerfile.warnings == (
        f"{tmp_path / 'Dockerfile'}:3: DuplicateStageName: Duplicate stage name 'x', "
        "stage names should be unique",
    )
    assert dockerfile.stage("x").index == 1
    assert dockerfile.stage("x", before=1).index == 0
