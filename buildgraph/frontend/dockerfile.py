"""Parses a Dockerfile into stages of instructions, with exact 1-based line numbers."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from buildgraph.errors import InputError, Location
from buildgraph.frontend import instructions as ins
from buildgraph.frontend.arguments import build_instruction
from buildgraph.frontend.words import can_have_heredocs, heredoc_openers

_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_KNOWN_DIRECTIVES = ("syntax", "escape", "check")
_BOM = "\ufeff"
MAX_BYTES = 4 << 20  # a Dockerfile larger than 4 MiB is refused unread

# dockerfile-parse is not used for tokenising: it has no heredocs and ends an instruction at an
# empty continuation line, so this module follows buildkit's parser.go line by line instead.
# tests/frontend/test_dockerfile_parse_agrees.py checks that the two agree everywhere else.


@dataclass(frozen=True, slots=True)
class Stage:
    index: int
    name: str | None  # lower-cased `AS` name
    base: ins.From
    instructions: tuple[ins.Instruction, ...]


@dataclass(frozen=True, slots=True)
class Dockerfile:
    path: Path
    directives: tuple[tuple[str, str], ...]  # e.g. (("syntax", "docker/dockerfile:1"),)
    global_args: tuple[ins.Arg, ...]  # ARGs before the first FROM
    stages: tuple[Stage, ...]
    escape: str = "\\"
    warnings: tuple[str, ...] = ()

    def stage(self, reference: str, *, before: int | None = None) -> Stage | None:
        """The stage named (case-insensitively) or numbered `reference`, if any. Of stages
        that share a name the last one counts, as in BuildKit (which only warns)."""
        candidates = self.stages if before is None else self.stages[:before]
        wanted = reference.lower()
        for stage in reversed(candidates):
            if stage.name == wanted:
                return stage
        if reference.isdecimal() and len(reference) < 10 and int(reference) < len(candidates):
            return candidates[int(reference)]
        return None


def parse_dockerfile(path: Path, text: str | None = None, *, escape: str = "\\") -> Dockerfile:
    """Parse `text` (read from `path` when None). `escape` is overridden by `# escape=`."""
    if text is None:
        try:
            if path.stat().st_size > MAX_BYTES:
                raise InputError(f"larger than {MAX_BYTES >> 20} MiB", Location(path))
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read Dockerfile: {err}", Location(path)) from err
    if (nul := text.find("\0")) >= 0:  # no command, path or value can hold one: say so now
        raise InputError(
            "a NUL byte (a Dockerfile is text)", Location(path, text.count("\n", 0, nul) + 1)
        )
    scanner = _Scanner(path, text, escape)
    lines = scanner.logical_lines()
    return _assemble(path, scanner, lines)


@dataclass(frozen=True, slots=True)
class _Line:
    text: str  # the logical line, continuations joined, comments dropped
    line: int  # 1-based number of its first physical line
    heredocs: tuple[ins.Heredoc, ...]


class _Scanner:
    """Physical lines -> logical lines, as buildkit's parser.Parse does it."""

    def __init__(self, path: Path, text: str, escape: str) -> None:
        self.path = path
        # Only "\n" ends a line, as in Go's scanner (str.splitlines also breaks on \f, \v...).
        self.lines = re.findall(r"[^\n]*\n|[^\n]+$", text.removeprefix(_BOM))
        self.pos = 0  # index of the next physical line; also the count of lines read
        self.directives: dict[str, str] = {}
        self.directives_done = False
        self.empty_continuations: list[int] = []
        self.set_escape(escape, None)

    def set_escape(self, escape: str, where: Location | None) -> None:
        if escape not in ("\\", "`"):
            raise InputError(f"invalid escape token {escape!r}: must be ` or \\", where)
        self.escape = escape
        token = re.escape(escape)
        # A trailing escape continues the line unless it is itself escaped (`\\`).
        self.continuation = re.compile(rf"([^{token}]){token}[ \t]*$|^{token}[ \t]*$")

    def where(self, line: int) -> Location:
        return Location(self.path, line)

    def next_raw(self) -> str | None:
        if self.pos >= len(self.lines):
            return None
        self.pos += 1
        return self.lines[self.pos - 1]

    def directive(self, token: str) -> None:
        if self.directives_done:
            return
        match = _DIRECTIVE.match(token)
        key = match[1].lower() if match else ""
        if key not in _KNOWN_DIRECTIVES:
            self.directives_done = True  # directives only count at the very top
            return
        if key in self.directives:
            raise InputError(f"only one {key} parser directive can be used", self.where(self.pos))
        self.directives[key] = match[2]  # type: ignore[index]
        if key == "escape":
            self.set_escape(match[2], self.where(self.pos))  # type: ignore[index]

    def process(self, raw: str, strip_left: bool) -> str:
        token = raw.rstrip("\r\n")
        if strip_left:
            token = token.lstrip()
        self.directive(token)
        return "" if token.startswith("#") else token

    def trim_continuation(self, line: str) -> tuple[str, bool]:
        if self.continuation.search(line):
            return self.continuation.sub(r"\1", line), False
        return line, True

    def logical_lines(self) -> list[_Line]:
        result: list[_Line] = []
        while (raw := self.next_raw()) is not None:
            start = self.pos
            line, done = self.trim_continuation(self.process(raw, strip_left=True))
            if done and not line:
                continue
            while not done and (raw := self.next_raw()) is not None:
                token = self.process(raw, strip_left=False)
                if _is_comment(raw):
                    continue  # comments may sit between continuation lines
                if not token.strip():
                    self.empty_continuations.append(self.pos)
                    continue
                more, done = self.trim_continuation(token)
                line += more
            where = self.where(start)
            heredocs: tuple[ins.Heredoc, ...] = ()
            if can_have_heredocs(line, where):
                heredocs = tuple(self.read_heredoc(doc, where) for doc in heredoc_openers(line))
            result.append(_Line(line, start, heredocs))
        return result

    def read_heredoc(self, opener: ins.Heredoc, where: Location) -> ins.Heredoc:
        content: list[str] = []
        while (raw := self.next_raw()) is not None:
            candidate = raw.rstrip("\r\n")
            if opener.chomp:
                candidate = candidate.lstrip("\t")
            if candidate == opener.name:
                body = "".join(content)
                if opener.chomp:  # `<<-`: leading tabs go from every line
                    body = re.sub(r"(?m)^\t+", "", body)
                return replace(opener, content=body)
            content.append(raw)
        raise InputError(f"unterminated heredoc {opener.name!r}", where)


def _is_comment(raw: str) -> bool:
    return raw.rstrip("\r\n").lstrip().startswith("#")


def _assemble(path: Path, scanner: _Scanner, lines: list[_Line]) -> Dockerfile:
    if not lines:
        raise InputError("the Dockerfile has no instructions", Location(path, max(scanner.pos, 1)))
    global_args: list[ins.Arg] = []
    stages: list[tuple[ins.From, list[ins.Instruction]]] = []
    names: set[str] = set()
    warnings: list[str] = []
    for logical in lines:
        where = Location(path, logical.line)
        instruction = build_instruction(logical.text, logical.heredocs, where, scanner.escape)
        if isinstance(instruction, ins.From):
            if instruction.name is not None:
                if instruction.name in names:  # BuildKit's DuplicateStageName check: a warning
                    warnings.append(
                        f"{where}: DuplicateStageName: Duplicate stage name "
                        f"{instruction.name!r}, stage names should be unique"
                    )
                names.add(instruction.name)
            stages.append((instruction, []))
        elif stages:
            stages[-1][1].append(instruction)
        elif isinstance(instruction, ins.Arg):
            global_args.append(instruction)
        else:
            keyword = logical.text.split(maxsplit=1)[0].upper()
            raise InputError(f"{keyword} before the first FROM (only ARG may come first)", where)
    if not stages:
        raise InputError("the Dockerfile has no FROM instruction", Location(path, lines[-1].line))
    warnings += [f"{path}:{line}: empty continuation line" for line in scanner.empty_continuations]
    return Dockerfile(
        path=path,
        directives=tuple(scanner.directives.items()),
        global_args=tuple(global_args),
        stages=tuple(
            Stage(index=i, name=base.name, base=base, instructions=tuple(body))
            for i, (base, body) in enumerate(stages)
        ),
        escape=scanner.escape,
        warnings=tuple(warnings),
    )
