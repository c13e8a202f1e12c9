"""Docker's word expansion: quotes, escapes and ${VAR} forms, as moby's shell lexer does them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from buildgraph.errors import InputError, Location, shorten
from buildgraph.frontend import shellpattern

# Instructions whose arguments get ${VAR} expansion before they run (moby: `replaceEnvAllowed`
# plus ARG). RUN, CMD, ENTRYPOINT and SHELL are left to the shell at run time; ONBUILD is
# expanded only when it triggers in a child build; HEALTHCHECK/MAINTAINER never.
EXPANDING_INSTRUCTIONS = frozenset(
    {"ADD", "ARG", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER", "VOLUME",
     "WORKDIR"}
)  # fmt: skip

# Build args that can be passed without an ARG line and are never reported as unused.
PROXY_ARGS = (
    "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
    "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
)  # fmt: skip
PLATFORM_ARGS = (
    "TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT",
    "BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT",
)  # fmt: skip

_SPECIAL_PARAMS = frozenset("@*#?-$!0")

# Bounds on what expansion may cost, so that hostile input is an error and not an hour.
MAX_EXPANSION = 2 << 20  # bytes substituted into one word: exec's whole argv + env (ARG_MAX)
MAX_TOTAL_EXPANSION = 16 << 20  # bytes substituted into all the words of one Dockerfile
MAX_NESTING = 64  # ${A:-${B:-…}} levels


@dataclass(slots=True)
class ExpansionBudget:
    """What substitution may still produce, shared by the words of one Dockerfile: a per-word
    bound alone would still let `LABEL a=$BIG` repeated a thousand times fill the memory."""

    left: int = MAX_TOTAL_EXPANSION


_SPACE = re.compile(r"\s+")


def platform_args(target: str, build: str) -> dict[str, str]:
    """The automatic TARGET*/BUILD* args for "os/arch[/variant]" platforms."""
    result: dict[str, str] = {}
    for prefix, platform in (("TARGET", target), ("BUILD", build)):
        parts = platform.split("/")
        if len(parts) < 2 or not all(parts):
            raise InputError(f"invalid platform {platform!r}: expected os/arch[/variant]")
        result[f"{prefix}PLATFORM"] = platform
        result[f"{prefix}OS"] = parts[0]
        result[f"{prefix}ARCH"] = parts[1]
        result[f"{prefix}VARIANT"] = parts[2] if len(parts) > 2 else ""
    return result


def expand(
    text: str,
    env: Mapping[str, str],
    *,
    escape: str = "\\",
    where: Location | None = None,
    quotes: bool = True,
    budget: ExpansionBudget | None = None,
) -> str:
    """`text` with quotes removed and variables substituted (moby `ProcessWord`).

    quotes=False treats quotes as plain characters, for heredoc bodies (SkipProcessQuotes)."""
    lexer = _Lexer(text, env, escape, where, budget=budget)
    lexer.quotes = quotes
    return lexer.run()[0]


def expand_words(
    text: str,
    env: Mapping[str, str],
    *,
    escape: str = "\\",
    where: Location | None = None,
    budget: ExpansionBudget | None = None,
) -> list[str]:
    """Expand, then split on unquoted whitespace (moby `ProcessWords`)."""
    return _Lexer(text, env, escape, where, budget=budget).run()[1]


def split_raw_words(text: str, *, escape: str = "\\") -> list[str]:
    """Words with quotes and escapes kept and no variable substituted (for finding heredocs)."""
    lexer = _Lexer(text, {}, escape, None, raw=True)
    try:
        return lexer.run()[1]
    except InputError:
        return text.split()


class _Stop(Exception):
    """Internal: the end of input was hit while looking for a closing character."""


@dataclass(slots=True)
class _Words:
    words: list[str] = field(default_factory=list)
    word: list[str] = field(default_factory=list)  # the pieces of the current word

    def add_char(self, ch: str) -> None:
        if ch.isspace():
            self.end_word()
        else:
            self.word.append(ch)

    def add_raw(self, text: str) -> None:
        if text:  # `''` alone makes no word (moby: only a non-empty word counts)
            self.word.append(text)

    def add_text(self, text: str) -> None:
        """Substituted text: it splits into words on whitespace (one pass, not char by char)."""
        pieces = _SPACE.split(text)
        for index, piece in enumerate(pieces):
            if index:
                self.end_word()
            if piece:
                self.word.append(piece)

    def end_word(self) -> None:
        if self.word:
            self.words.append("".join(self.word))
            self.word = []

    def finish(self) -> list[str]:
        self.end_word()
        return self.words


class _Lexer:
    """One pass over one word; mirrors buildkit's shellWord so edge cases match docker."""

    def __init__(
        self,
        text: str,
        env: Mapping[str, str],
        escape: str,
        where: Location | None,
        *,
        raw: bool = False,
        budget: ExpansionBudget | None = None,
    ) -> None:
        self.text, self.pos, self.env, self.escape, self.where = text, 0, env, escape, where
        self.raw = raw  # keep quotes, escapes and unset variables verbatim
        self.raw_escapes = raw
        self.quotes = True
        self.depth = 0  # ${...} nesting
        self.substituted = 0  # bytes substituted so far, against MAX_EXPANSION
        self.budget = budget
        self._plain: dict[str, re.Pattern[str]] = {}  # stop character -> run of plain text

    def fail(self, message: str) -> InputError:
        shown = shorten(self.text, 80)
        return InputError(f"{message} (in {shown!r})", self.where)

    def substitute(self, value: str) -> str:
        self.substituted += len(value)
        if self.substituted > MAX_EXPANSION:
            raise self.fail(f"expands to more than {MAX_EXPANSION >> 20} MiB")
        if self.budget is not None:
            self.budget.left -= len(value)
            if self.budget.left < 0:
                raise self.fail(
                    f"variables expand to more than {MAX_TOTAL_EXPANSION >> 20} MiB in all"
                )
        return value

    def plain(self, stop: str) -> re.Pattern[str]:
        """A run of characters that `_until` takes as they are (no $, quote, escape, space)."""
        pattern = self._plain.get(stop)
        if pattern is None:
            special = "$" + stop + self.escape + ("'\"" if self.quotes else "")
            pattern = re.compile(f"[^\\s{re.escape(special)}]+")
            self._plain[stop] = pattern
        return pattern

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        self.pos += 1 if ch else 0
        return ch

    def run(self) -> tuple[str, list[str]]:
        try:
            return self.until("", self.raw_escapes)
        except _Stop as stop:
            raise self.fail(str(stop)) from None

    def until(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.fail(f"substitutions nested more than {MAX_NESTING} levels deep")
        try:
            return self._until(stop)
        finally:
            self.raw_escapes, self.depth = saved, self.depth - 1

    def _until(self, stop: str) -> tuple[str, list[str]]:
        result: list[str] = []
        words = _Words()
        plain = self.plain(stop)
        while ch := self.peek():
            if run := plain.match(self.text, self.pos):  # the common case, in one step
                self.pos = run.end()
                result.append(run[0])
                words.add_raw(run[0])
                continue
            if stop and ch == stop:
                self.next()
                return "".join(result), words.finish()
            if ch == "$":
                value = self.dollar()
                result.append(value)
                words.add_text(value)  # substituted text splits into words
            elif ch in "'\"" and self.quotes:
                value = self.single_quote() if ch == "'" else self.double_quote()
                result.append(value)
                words.add_raw(value)
            else:
                ch = self.next()
                if ch == self.escape:
                    if self.raw_escapes:
                        words.add_raw(ch)
                        result.append(ch)
                    ch = self.next()
                    if not ch:  # a trailing escape is dropped
                        break
                    words.add_raw(ch)
                else:
                    words.add_char(ch)
                result.append(ch)
        if stop:
            raise _Stop(f"unexpected end of statement while looking for matching {stop}")
        return "".join(result), words.finish()

    def single_quote(self) -> str:
        start = self.pos
        end = self.text.find("'", start + 1)
        if end < 0:
            self.pos = len(self.text)
            raise _Stop("unexpected end of statement while looking for matching single-quote")
        self.pos = end + 1
        return self.text[start : end + 1] if self.raw else self.text[start + 1 : end]

    def double_quote(self) -> str:
        quote = self.next()
        out = [quote] if self.raw else []
        plain = re.compile("[^" + re.escape('"$' + self.escape) + "]+")
        while True:
            if run := plain.match(self.text, self.pos):
                self.pos = run.end()
                out.append(run[0])
            ch = self.peek()
            if not ch:
                raise _Stop("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.next()
                return "".join([*out, ch] if self.raw else out)
            if ch == "$":
                out.append(self.dollar())
                continue
            ch = self.next()
            if ch == self.escape:
                if self.raw_escapes:
                    out.append(ch)
                following = self.peek()
                if not following:
                    continue
                if following in ('"', "$", self.escape):  # only these can be escaped in "..."
                    ch = self.next()
            out.append(ch)

    def lookup(self, name: str) -> str | None:
        value = self.env.get(name)
        return value if value is None else self.substitute(value)

    def dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.name()
            if not name:
                return "$"
            value = self.lookup(name)
            if value is None and self.raw:
                return "$" + name
            return value or ""
        self.next()
        if not self.peek():
            raise self.fail("syntax error: missing '}'")
        if self.peek() in "{}:":
            raise self.fail("syntax error: bad substitution")
        name = self.name()
        ch = self.next()
        if ch == "}":
            value = self.lookup(name)
            if value is None and self.raw:
                return "${" + name + "}"
            return value or ""
        if ch == "/":
            return self.replace(name)
        return self.modified(name, ch)

    def modified(self, name: str, ch: str) -> str:
        """`${name<modifier>word}` after `${name`: -, +, ?, #, % (with : for empty = unset)."""
        modifier = ch
        null_is_unset = ch == ":"
        if null_is_unset:
            ch = self.next()
            modifier += ch
        if ch not in ("+", "-", "?", "#", "%"):
            raise self.fail(f"unsupported modifier ({modifier}) in substitution")
        try:
            word, _ = self.until("}", ch in "#%")
        except _Stop:
            raise self.fail("syntax error: missing '}'") from None
        value = self.lookup(name)
        if value is None and self.raw:
            return "${" + name + modifier + word + "}"
        unset = value is None or (null_is_unset and value == "")
        if ch == "-":
            return word if unset else value or ""
        if ch == "+":
            return "" if unset else word
        if ch == "?":
            if unset:
                default = (
                    "is not allowed to be unset" if value is None else "is not allowed to be empty"
                )
                raise self.fail(f"{name}: {word or default}")
            return value or ""
        greedy = word.startswith(ch)
        pattern = word[1:] if greedy else word
        if ch == "%":
            return shellpattern.trim_suffix(pattern, value or "", greedy=greedy, fail=self.fail)
        return shellpattern.trim_prefix(pattern, value or "", greedy=greedy, fail=self.fail)

    def replace(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern, _ = self.until("/", True)
        except _Stop:
            raise self.fail("syntax error: missing '/' in ${}") from None
        try:
            replacement, _ = self.until("}", True)
        except _Stop:
            raise self.fail("syntax error: missing '}'") from None
        value = self.lookup(name)
        if value is None and self.raw:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        replaced = shellpattern.replace(
            pattern, value or "", replacement, every=replace_all, fail=self.fail
        )
        return self.substitute(replaced) if replace_all else replaced

    def name(self) -> str:
        start = self.pos
        ch = self.peek()
        if ch.isdecimal():  # $1, $12: positional, always empty here
            while self.peek().isdecimal():
                self.next()
            return self.text[start : self.pos]
        if ch and ch in _SPECIAL_PARAMS:
            return self.next()
        while (ch := self.peek()) and (ch.isalnum() or ch == "_"):
            self.next()
        return self.text[start : self.pos]
