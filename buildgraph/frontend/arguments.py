"""Turns one logical Dockerfile line (keyword, flags, arguments) into an instruction value."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from buildgraph.errors import InputError, Location, shorten
from buildgraph.frontend import instructions as ins
from buildgraph.frontend.expand import expand_words, split_raw_words
from buildgraph.frontend.flags import (
    FlagValues,
    parse_duration,
    parse_flags,
    parse_mount,
    split_flags,
)

_WHITESPACE = re.compile(r"[\t\v\f\r ]+")
_HEREDOC = re.compile(r"^(\d{0,9})<<(-?)([^<]*)$")
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9-_.]*$")
_NOT_STRINGS = "when using JSON array syntax, arrays must be comprised of strings only"


def split_command(line: str) -> tuple[str, list[str], str]:
    """(KEYWORD, flags, arguments) of one logical line (buildkit splitCommand)."""
    parts = _WHITESPACE.split(line.strip(), maxsplit=1)
    keyword = parts[0].upper()
    if len(parts) < 2:
        return keyword, [], ""
    flags, rest = split_flags(parts[1])
    return keyword, flags, rest.strip()


def parse_json_array(rest: str, where: Location) -> list[str] | None:
    """The strings of a JSON array, or None when `rest` is not one (then it is shell form)."""
    rest = rest.lstrip()
    if not rest.startswith("["):
        return None
    try:  # like Go's json.Decoder, anything after the array is ignored
        value, _ = json.JSONDecoder().raw_decode(rest)
    except ValueError:
        return None
    if not all(isinstance(item, str) for item in value):
        raise InputError(_NOT_STRINGS, where)
    return value


def parse_words(rest: str, escape: str) -> list[str]:
    """Whitespace-split words, quotes and escapes kept for expansion later (parseWords).

    Linear in the line: runs of ordinary characters are taken in one step, and a word is a list
    of pieces joined once (a 1 MiB ENV value is one step, not a million string copies)."""
    specials = re.escape("'\"" + escape)
    plain = re.compile(f"[^\\s{specials}]+")
    quoted = {q: re.compile(f"[^{re.escape(q + escape)}]+") for q in "'\""}
    words: list[str] = []
    word: list[str] = []
    quote, blank_ok, in_word = "", False, False
    pos, size = 0, len(rest)
    while pos < size:
        if quote:
            pos, quote = _quoted_piece(rest, pos, quote, escape, quoted[quote], word)
            continue
        if in_word and (run := plain.match(rest, pos)):
            word.append(run[0])
            pos = run.end()
            continue
        ch = rest[pos]
        if ch.isspace():
            if in_word and (blank_ok or word):
                words.append("".join(word))
            word, blank_ok, in_word = [], False, False
            pos += 1
            continue
        in_word = True
        if ch == escape:
            pos = _escaped(rest, pos, word)
            continue
        if ch in "'\"":
            quote, blank_ok = ch, True
        word.append(ch)
        pos += 1
    if in_word and (blank_ok or word):
        words.append("".join(word))
    return words


def _quoted_piece(
    rest: str, pos: int, quote: str, escape: str, run: re.Pattern[str], word: list[str]
) -> tuple[int, str]:
    """One step inside quotes: a run of plain characters, an escape (not in '...'), or the
    closing quote. Returns the next position and the quote still open ("" once closed)."""
    if found := run.match(rest, pos):
        word.append(found[0])
        return found.end(), quote
    ch = rest[pos]
    if ch == escape and quote != "'":
        return _escaped(rest, pos, word), quote
    word.append(ch)
    return pos + 1, "" if ch == quote else quote


def _escaped(rest: str, pos: int, word: list[str]) -> int:
    """At an escape character: keep it with the character it escapes (expansion reads both
    later); a trailing escape is dropped. Returns the position after them."""
    if pos + 1 == len(rest):
        return pos + 1
    word.append(rest[pos : pos + 2])
    return pos + 2


def parse_heredoc_word(word: str) -> ins.Heredoc | None:
    """A heredoc opener such as `<<EOF`, `<<-"EOF"` or `3<<EOF` (content filled in later)."""
    match = _HEREDOC.match(word)
    if not match or not match[3]:
        return None
    try:
        words = expand_words(match[3], {})
    except InputError:
        return None
    if len(words) != 1:
        return None
    # A quoted delimiter turns expansion off; compare quote counts with and without quotes.
    raw = split_raw_words(match[3])
    quotes = sum(raw[0].count(q) for q in "'\"") if raw else 0
    expand = quotes == sum(words[0].count(q) for q in "'\"")
    return ins.Heredoc(
        name=words[0],
        content="",
        expand=expand,
        chomp=match[2] == "-",
        fd=int(match[1]) if match[1] else None,
    )


def heredoc_openers(line: str) -> list[ins.Heredoc]:
    if "<<" not in line:  # the common case: no word to split
        return []
    return [doc for word in split_raw_words(line) if (doc := parse_heredoc_word(word))]


def can_have_heredocs(line: str, where: Location) -> bool:
    """RUN, COPY and ADD (also behind ONBUILD) in shell form may carry heredocs."""
    keyword, _, rest = split_command(line)
    if keyword == "ONBUILD":
        keyword, _, rest = split_command(rest)
    if keyword not in ("RUN", "COPY", "ADD"):
        return False
    return parse_json_array(rest, where) is None


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
    args = _WHITESPACE.split(req.rest)
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
        args = _WHITESPACE.split(req.rest) if req.rest else []
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
        parts = _WHITESPACE.split(req.rest, maxsplit=1)
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
    kind, rest = [*_WHITESPACE.split(req.rest, maxsplit=1), ""][:2]
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
    items = tuple(argv) if argv is not None else tuple(_WHITESPACE.split(req.rest))
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
