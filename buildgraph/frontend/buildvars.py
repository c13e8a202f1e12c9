"""Buildfile vars: declarations from every file, env and `--set` overrides, `${NAME}` expansion."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from buildgraph.errors import InputError, Location, shorten
from buildgraph.frontend.yamlmarks import Node, as_map, as_text, did_you_mean

VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_REFERENCE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\})")
MAX_VALUE = 1 << 20  # what one value may expand to: vars that double each other stop here
MAX_DEPTH = 64  # vars whose defaults refer to vars … that deep


def substitute(text: str, lookup: Callable[[str], str], where: Location) -> str:
    """`text` with each `${NAME}` replaced by lookup(NAME) and `$$` by `$`; any other `$` is an
    error, so a forgotten brace (`$REGISTRY`) never passes silently."""
    parts: list[str] = []
    start = size = 0
    while (dollar := text.find("$", start)) >= 0:
        parts.append(text[start:dollar])
        match = _REFERENCE.match(text, dollar)
        if match is None:
            shown = shorten(text, 80)
            raise InputError(
                f"invalid '$' in {shown!r}: write ${{NAME}} for a var or $$ for a literal '$'",
                where,
            )
        parts.append("$" if match[1] is None else lookup(match[1]))
        size += len(parts[-1])
        if size > MAX_VALUE:
            raise InputError(f"vars expand to more than {MAX_VALUE >> 20} MiB here", where)
        start = match.end()
    parts.append(text[start:])
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class _Declaration:
    default: str  # as written; may itself use ${OTHER}
    where: Location


class VarTable:
    """The project's vars while the files are being read.

    One namespace for the whole project: a file may use a var declared by any file. When two
    files declare one name, the including file wins over the files it includes (so the root
    Buildfile has the last word); two files off one include chain must agree on the default.
    A value comes from `--set vars.NAME=V`, else the environment variable NAME, else the default.
    Overriding values are taken literally; defaults are expanded."""

    def __init__(self, env: Mapping[str, str], assigned: Mapping[str, tuple[str, Location]]):
        self._env = env
        self._assigned = assigned  # `--set vars.NAME=V`: value and where it was given
        self._declarations: dict[str, _Declaration] = {}
        self._values: dict[str, str] = {}

    def declare(self, node: Node | None, ancestors: tuple[Path, ...]) -> None:
        """Adds the `vars:` mapping of a file included through `ancestors` (root first)."""
        if node is None:
            return
        for key, value in as_map(node, "vars").entries:
            if not VAR_NAME.match(key.text):
                raise InputError(f"vars: invalid name {key.text!r}: use letters, digits, _",
                                 key.where)  # fmt: skip
            default = as_text(value, f"vars.{key.text}")
            known = self._declarations.get(key.text)
            if known is None:
                self._declarations[key.text] = _Declaration(default, key.where)
            elif known.where.path not in ancestors and known.default != default:
                raise InputError(
                    f"var {key.text!r} is declared with another default at {known.where}",
                    key.where,
                )

    def check_assigned(self) -> None:
        """Every `--set vars.NAME` names a declared var; called once every file is read."""
        for name, (_, where) in sorted(self._assigned.items()):
            if name not in self._declarations:
                hint = did_you_mean(name, self._declarations)
                raise InputError(f"unknown var {name!r}{hint}", where)

    def expand(self, text: str, where: Location) -> str:
        return substitute(text, lambda name: self._value(name, where, ()), where)

    def values(self) -> tuple[tuple[str, str], ...]:
        return tuple((name, self._value(name, None, ())) for name in sorted(self._declarations))

    def _value(self, name: str, where: Location | None, busy: tuple[str, ...]) -> str:
        if name in self._values:
            return self._values[name]
        declaration = self._declarations.get(name)
        if declaration is None:
            hint = did_you_mean(name, self._declarations)
            raise InputError(f"unknown var ${{{name}}}{hint}; declare it under vars:", where)
        if name in busy:
            cycle = " -> ".join((*busy[busy.index(name) :], name))
            raise InputError(f"vars refer to each other in a cycle: {cycle}", declaration.where)
        if len(busy) >= MAX_DEPTH:
            raise InputError(f"vars refer to vars more than {MAX_DEPTH} deep", declaration.where)
        if name in self._assigned:
            value = self._assigned[name][0]
        elif name in self._env:
            value = self._env[name]
        else:
            where = declaration.where
            value = substitute(
                declaration.default, lambda other: self._value(other, where, (*busy, name)), where
            )
        self._values[name] = value
        return value
