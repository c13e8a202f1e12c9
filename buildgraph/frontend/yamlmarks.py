"""A YAML reader that keeps the file and line of every key and value, plus typed accessors."""

from __future__ import annotations

import difflib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import yaml

from buildgraph.errors import InputError, Location, shorten


@dataclass(frozen=True, slots=True)
class Scalar:
    value: object  # as YAML types it: str, int, float, bool, None, date…
    text: str  # the scalar as written (after quote removal)
    where: Location


@dataclass(frozen=True, slots=True)
class Seq:
    items: tuple[Node, ...]
    where: Location


@dataclass(frozen=True, slots=True)
class Map:
    entries: tuple[tuple[Scalar, Node], ...]  # in file order; keys are unique strings
    where: Location

    def get(self, key: str) -> Node | None:
        """The value of `key`; None when absent or null (`key:` with nothing: the default)."""
        value = next((value for name, value in self.entries if name.text == key), None)
        return None if isinstance(value, Scalar) and value.value is None else value


Node = Scalar | Seq | Map


MAX_BYTES = 4 << 20  # a Buildfile larger than 4 MiB is refused unread
MAX_DEPTH = 64  # nesting of lists and mappings
MAX_ALIAS_NODES = 100_000  # nodes that aliases may add in all: a 500-byte "billion laughs" stops


def read_yaml(path: Path) -> Node | None:
    """The document in `path` as marked nodes; None for an empty file."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise InputError(f"larger than {MAX_BYTES >> 20} MiB", Location(path))
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError("not UTF-8 text", Location(path, 1)) from err
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", Location(path)) from err
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # checks every character: NUL and the like are refused
        root = loader.get_single_node()
        return None if root is None else _Converter(loader, path).convert(root, 1)
    except yaml.MarkedYAMLError as err:
        line = err.problem_mark.line + 1 if err.problem_mark else 1  # PyYAML: 0-based
        raise InputError(f"invalid YAML: {err.problem}", Location(path, line)) from err
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1
        reason = f"{err.reason} (U+{ord(err.character):04X})" if err.character else err.reason
        raise InputError(f"invalid YAML: {reason}", Location(path, line)) from err
    except RecursionError as err:  # the composer recurses per level, before any check of ours
        line = loader.line + 1 if loader else None
        raise InputError(f"nested more than {MAX_DEPTH} levels deep", Location(path, line)) from err
    finally:
        if loader is not None:
            loader.dispose()


class _Converter:
    """yaml.Node → marked nodes, with the nesting and the expansion of aliases bounded."""

    def __init__(self, loader: yaml.SafeLoader, path: Path) -> None:
        self.loader = loader
        self.path = path
        self.busy: set[int] = set()  # the collections being converted (recursive aliases)
        self.seen: set[int] = set()  # nodes converted once: meeting one again is an alias
        self.alias_nodes = 0  # nodes added by aliases so far
        self.alias_line = 0  # the line of the anchor whose alias is being expanded (0: none)

    def convert(self, node: yaml.Node, depth: int) -> Node:
        where = Location(self.path, node.start_mark.line + 1)
        if depth > MAX_DEPTH:
            raise InputError(f"nested more than {MAX_DEPTH} levels deep", where)
        outermost_alias = not self.alias_line and id(node) in self.seen
        if outermost_alias:
            self.alias_line = where.line or 0
        self.seen.add(id(node))
        if self.alias_line:
            self.alias_nodes += 1
            if self.alias_nodes > MAX_ALIAS_NODES:
                raise InputError(  # the composer shares the anchor's node: no alias line
                    f"YAML aliases of this anchor expand to more than {MAX_ALIAS_NODES} nodes",
                    Location(self.path, self.alias_line),
                )
        try:
            return self._convert(node, depth, where)
        finally:
            if outermost_alias:
                self.alias_line = 0

    def _convert(self, node: yaml.Node, depth: int, where: Location) -> Node:
        if isinstance(node, yaml.ScalarNode):
            try:
                value = self.loader.construct_object(node)
            except (ValueError, OverflowError) as err:  # 5000 digits, 2024-13-45, …
                shown = shorten(node.value)
                reason = str(err).split("; use sys.")[0]  # not Python's advice to a programmer
                raise InputError(f"invalid value {shown!r}: {reason}", where) from err
            return Scalar(value, node.value, where)
        if id(node) in self.busy:  # `&a [*a]`: an alias inside its own anchor
            raise InputError("recursive YAML alias", where)
        self.busy.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return Seq(tuple(self.convert(item, depth + 1) for item in node.value), where)
            self.loader.flatten_mapping(node)  # applies `<<:` merge keys
            entries: dict[str, tuple[Scalar, Node]] = {}
            for key_node, value_node in node.value:
                key = self.convert(key_node, depth + 1)
                if not isinstance(key, Scalar):
                    raise InputError("a mapping key must be a plain string", key.where)
                if key.text in entries:
                    first = entries[key.text][0].where.line
                    raise InputError(
                        f"duplicate key {key.text!r} (first at line {first})", key.where
                    )
                entries[key.text] = (key, self.convert(value_node, depth + 1))
            return Map(tuple(entries.values()), where)
        finally:
            self.busy.discard(id(node))


def _kind(node: Node) -> str:
    if isinstance(node, Map):
        return "a mapping"
    if isinstance(node, Seq):
        return "a list"
    value = node.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({node.text})"
    return (
        f"a string ({shorten(node.text)!r})"
        if isinstance(value, str)
        else f"a {type(value).__name__}"
    )


def type_error(node: Node, field: str, expected: str) -> InputError:
    return InputError(f"{field}: expected {expected}, got {_kind(node)}", node.where)


def as_map(node: Node, field: str, *, keys: Collection[str] | None = None) -> Map:
    """`node` as a mapping; `keys` (if given) are the only keys allowed, with a "did you mean"."""
    if isinstance(node, Scalar) and node.value is None:
        return Map((), node.where)  # `base:` with nothing under it: all defaults
    if not isinstance(node, Map):
        raise type_error(node, field, "a mapping")
    for key, _ in node.entries if keys is not None else ():
        if key.text not in keys:
            raise InputError(f"{field}: unknown key {key.text!r}{did_you_mean(key.text, keys)}",
                             key.where)  # fmt: skip
    return node


def as_str(node: Node, field: str) -> str:
    if not isinstance(node, Scalar) or not isinstance(node.value, str):
        raise type_error(node, field, "a string")
    return node.value


def as_text(node: Node, field: str) -> str:
    """A string, number or boolean, as written (`3.10` stays "3.10"), as buildx does for args."""
    if not isinstance(node, Scalar) or node.value is None:
        raise type_error(node, field, "a string, number or boolean")
    return node.text


def as_bool(node: Node, field: str) -> bool:
    if not isinstance(node, Scalar) or not isinstance(node.value, bool):
        raise type_error(node, field, "true or false")
    return node.value


def as_list(node: Node, field: str) -> tuple[Node, ...]:
    if not isinstance(node, Seq):
        raise type_error(node, field, "a list")
    return node.items


def did_you_mean(word: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
