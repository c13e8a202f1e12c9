"""Turns one logical Dockerfile line (keyword, flags, arguments) into an instruction value."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from buildgraph.errors import InputError, Location, shorten
from buildgraph.frontend import instructions as ins
from buildgraph.frontend.flags import (
    FlagValues,
    parse_duration,
    parse_flags,
    parse_mount,
)
from buildgraph.frontend.words import (
    WHITESPACE,
    parse_heredoc_word,
    parse_json_array,
    parse_words,
    split_command,
)

_STAGE_NAME = re.compile(r"^[a-z][a-z0-9-_.]*$")


def build_instruction(
    line: str, heredocs: Sequence[ins.Heredoc], where: Location, escape: str
) -> ins.Instruction:
    """The instruction value for one logical line; raises InputError naming `where`."""
    keyword, flags, rest = split_command(line)
    builder = _BUILDERS.get(keyword)
    if builder is None:
        raise InputError(f"unknown instruction: {keyword}", where)
    return builder(_Request(keyword, flags, rest, tuple(heredocs), where, line.strip(), escape))


@dataclass(frozen=True, slots=True)
class _Request:
    keyword: str
    flags: list[str]
    rest: str  # the arguments after the flags
    heredocs: tuple[ins.Heredoc, ...]
    where: Location
    original: str
    escape: str

    def fail(self, message: str) -> InputError:
        return InputError(message, self.where)

    def parsed_flags(self) -> FlagValues:
        return parse_flags(self.keyword, self.flags, self.where)

    def need(self, exactly_one: bool = False) -> None:
        if not self.rest:
            amount = "exactly one argument" if exactly_one else "at least one argument"
            raise self.fail(f"{self.keyword} requires {amount}")

    def common(self) -> dict[str, object]:
        return {"where": self.where, "original": self.original}


def _from(req: _Request) -> ins.From:
    req.need()
    flags = req.parsed_flags()
    args = WHITESPACE.split(req.rest)
    name = None
    if len(args) == 3 and args[1].lower() == "as":
        name = args[2].lower()
        if not _STAGE_NAME.match(name):
            raise req.fail(f"invalid name for build stage: {args[2]!r}")
    elif len(args) != 1:
        raise req.fail("FROM requires either one or three arguments")
    return ins.From(image=args[0], name=name, platform=flags.string("platform"), **req.common())


def _command(req: _Request, *, allow_empty_json: bool = True) -> tuple[tuple[str, ...], bool]:
    req.need()
    argv = parse_json_array(req.rest, req.where)
    if argv is None:
        return (req.rest,), True
    if not argv and not allow_empty_json:
        raise req.fail(f"{req.keyword} requires at least one argument")
    return tuple(argv), False


def _run(req: _Request) -> ins.Run:
    flags = req.parsed_flags()
    command, shell = _command(req, allow_empty_json=False)
    network = flags.string("network") or "default"
    if network not in ("default", "none", "host"):
        raise req.fail(f"unsupported network mode {network!r}")
    security = flags.string("security") or "sandbox"
    if security not in ("sandbox", "insecure"):
        raise req.fail(f"unsupported security mode {security!r}")
    return ins.Run(
        command=command,
        shell=shell,
        heredocs=req.heredocs,
        mounts=tuple(parse_mount(text, req.where) for text in flags.strings("mount")),
        network=network,
        security=security,
        **req.common(),
    )


def _sources(req: _Request) -> tuple[tuple[str, ...], str, tuple[ins.Heredoc, ...]]:
    args = parse_json_array(req.rest, req.where)
    if args is None:
        args = WHITESPACE.split(req.rest) if req.rest else []
    if len(args) < 2:
        raise req.fail(f"{req.keyword} requires at least two arguments: source(s) and destination")
    if parse_heredoc_word(args[-1]):
        raise req.fail(f"{req.keyword} cannot use a heredoc as the destination")
    contents = {doc.name: doc for doc in req.heredocs}
    sources: list[str] = []
    inline: list[ins.Heredoc] = []
    for source in args[:-1]:
        opener = parse_heredoc_word(source)
        if opener and opener.name in contents:
            inline.append(contents[opener.name])
        else:
            sources.append(source)
    return tuple(sources), args[-1], tuple(inline)


def _copy(req: _Request) -> ins.Copy:
    flags = req.parsed_flags()
    sources, dest, heredocs = _sources(req)
    return ins.Copy(
        sources=sources,
        dest=dest,
        heredocs=heredocs,
        from_=flags.string("from"),
        chown=flags.string("chown"),
        chmod=flags.string("chmod"),
        link=flags.boolean("link"),
        parents=flags.boolean("parents"),
        exclude=flags.strings("exclude"),
        **req.common(),
    )


def _add(req: _Request) -> ins.Add:
    flags = req.parsed_flags()
    sources, dest, heredocs = _sources(req)
    return ins.Add(
        sources=sources,
        dest=dest,
        heredocs=heredocs,
        chown=flags.string("chown"),
        chmod=flags.string("chmod"),
        link=flags.boolean("link"),
        checksum=flags.string("checksum"),
        keep_git_dir=flags.boolean("keep-git-dir"),
        exclude=flags.strings("exclude"),
        **req.common(),
    )


def _name_values(req: _Request) -> tuple[tuple[str, str], ...]:
    """ENV/LABEL pairs: `k=v ...`, or the legacy `k v w` (one pair, value = rest of line)."""
    req.parsed_flags()
    words = parse_words(req.rest, req.escape)
    if not words:
        raise req.fail(f"{req.keyword} requires at least one argument")
    if "=" not in words[0]:
        parts = WHITESPACE.split(req.rest, maxsplit=1)
        if len(parts) < 2:
            raise req.fail(f"{req.keyword} must have two arguments")
        return ((parts[0], parts[1]),)
    pairs = []
    for word in words:
        key, has_value, value = word.partition("=")
        if not has_value:
            raise req.fail(
                f"syntax error - can't find = in {word!r}. Must be of the form: name=value"
            )
        if not key:
            raise req.fail(f"{req.keyword} names can not be blank")
        pairs.append((key, value))
    return tuple(pairs)


def _arg(req: _Request) -> ins.Arg:
    req.parsed_flags()
    words = parse_words(req.rest, req.escape)
    if not words:
        raise req.fail("ARG requires at least one argument")
    pairs: list[tuple[str, str | None]] = []
    for word in words:
        key, has_value, value = word.partition("=")
        if not key:
            raise req.fail("ARG names can not be blank")
        pairs.append((key, value if has_value else None))
    return ins.Arg(pairs=tuple(pairs), **req.common())


def _single(req: _Request) -> str:
    req.parsed_flags()
    req.need(exactly_one=True)
    return req.rest


def _healthcheck(req: _Request) -> ins.Healthcheck:
    req.need()
    kind, rest = [*WHITESPACE.split(req.rest, maxsplit=1), ""][:2]
    kind = kind.upper()
    if kind == "NONE":
        if rest or req.flags:
            raise req.fail("HEALTHCHECK NONE takes no arguments")
        return ins.Healthcheck(test=("NONE",), **req.common())
    if kind != "CMD":
        raise req.fail(f"unknown type {kind!r} in HEALTHCHECK (try CMD)")
    flags = req.parsed_flags()
    argv = parse_json_array(rest, req.where)
    test = ("CMD-SHELL", rest) if argv is None else ("CMD", *argv)
    if not rest or argv == []:
        raise req.fail("missing command after HEALTHCHECK CMD")
    retries = flags.string("retries") or "0"
    if (
        not retries.isdecimal()
        or len(retries) > 18  # Go's int64 (and Python's int() refuses 4300 digits)
        or (flags.string("retries") is not None and int(retries) < 1)
    ):
        shown = shorten(retries)
        raise req.fail(f"--retries must be a whole number of at least 1, not {shown!r}")

    def duration(name: str) -> int:
        return parse_duration(flags.string(name) or "", name, req.where)

    return ins.Healthcheck(
        test=test,
        interval=duration("interval"),
        timeout=duration("timeout"),
        start_period=duration("start-period"),
        start_interval=duration("start-interval"),
        retries=int(retries),
        **req.common(),
    )


def _onbuild(req: _Request) -> ins.Onbuild:
    req.parsed_flags()
    req.need()
    keyword = split_command(req.rest)[0]
    if keyword == "ONBUILD":
        raise req.fail("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if keyword in ("FROM", "MAINTAINER"):
        raise req.fail(f"{keyword} isn't allowed as an ONBUILD trigger")
    trigger = build_instruction(req.rest, req.heredocs, req.where, req.escape)
    return ins.Onbuild(trigger=trigger, expression=req.rest, **req.common())


def _shell(req: _Request) -> ins.Shell:
    req.parsed_flags()
    req.need()
    argv = parse_json_array(req.rest, req.where)
    if argv is None:
        raise req.fail('SHELL requires the arguments to be in JSON form, e.g. ["/bin/sh", "-c"]')
    if not argv:
        raise req.fail("SHELL requires at least one argument")
    return ins.Shell(command=tuple(argv), **req.common())


def _list(req: _Request, *, json_form: bool = True) -> tuple[str, ...]:
    req.parsed_flags()
    req.need()
    argv = parse_json_array(req.rest, req.where) if json_form else None
    items = tuple(argv) if argv is not None else tuple(WHITESPACE.split(req.rest))
    if not items or any(not item.strip() for item in items):
        raise req.fail(f"{req.keyword} specified can not be an empty string")
    return items


def _entrypoint(req: _Request) -> ins.Entrypoint:
    req.parsed_flags()
    command, shell = _command(req)
    return ins.Entrypoint(command=command, shell=shell, **req.common())


def _cmd(req: _Request) -> ins.Cmd:
    req.parsed_flags()
    command, shell = _command(req)
    return ins.Cmd(command=command, shell=shell, **req.common())


_BUILDERS: dict[str, Callable[[_Request], ins.Instruction]] = {
    "FROM": _from,
    "RUN": _run,
    "COPY": _copy,
    "ADD": _add,
    "ENV": lambda req: ins.Env(pairs=_name_values(req), **req.common()),
    "LABEL": lambda req: ins.Label(pairs=_name_values(req), **req.common()),
    "ARG": _arg,
    "WORKDIR": lambda req: ins.Workdir(path=_single(req), **req.common()),
    "USER": lambda req: ins.User(user=_single(req), **req.common()),
    "STOPSIGNAL": lambda req: ins.StopSignal(signal=_single(req), **req.common()),
    "MAINTAINER": lambda req: ins.Maintainer(name=_single(req), **req.common()),
    "EXPOSE": lambda req: ins.Expose(ports=_list(req, json_form=False), **req.common()),
    "VOLUME": lambda req: ins.Volume(paths=_list(req), **req.common()),
    "ENTRYPOINT": _entrypoint,
    "CMD": _cmd,
    "SHELL": _shell,
    "HEALTHCHECK": _healthcheck,
    "ONBUILD": _onbuild,
}
