"""A YAML reader that keeps the file and line of every key and value, plus typed accessors."""

from __future__ import annotations

import difflib
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import yaml

from buildgraph.errors import InputError, Location


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


def read_yaml(path: Path) -> Node | None:
    """The document in `path` as marked nodes; None for an empty file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError("not UTF-8 text", Location(path, 1)) from err
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", Location(path)) from err
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        return None if root is None else _convert(root, loader, path, set())
    except yaml.MarkedYAMLError as err:
        line = err.problem_mark.line + 1 if err.problem_mark else 1  # PyYAML: 0-based
        raise InputError(f"invalid YAML: {err.problem}", Location(path, line)) from err
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1
        raise InputError(f"invalid YAML: {err.reason}", Location(path, line)) from err
    finally:
        loader.dispose()


def _convert(node: yaml.Node, loader: yaml.SafeLoader, path: Path, busy: set[int]) -> Node:
    where = Location(path, node.start_mark.line + 1)
    if isinstance(node, yaml.ScalarNode):
        return Scalar(loader.construct_object(node), node.value, where)
    if id(node) in busy:  # `&a [*a]`: an alias inside its own anchor
        raise InputError("recursive YAML alias", where)
    busy.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            return Seq(tuple(_convert(item, loader, path, busy) for item in node.value), where)
        loader.flatten_mapping(node)  # applies `<<:` merge keys
        entries: dict[str, tuple[Scalar, Node]] = {}
        for key_node, value_node in node.value:
            key = _convert(key_node, loader, path, busy)
            if not isinstance(key, Scalar):
                raise InputError("a mapping key must be a plain string", key.where)
            if key.text in entries:
                first = entries[key.text][0].where.line
                raise InputError(f"duplicate key {key.text!r} (first at line {first})", key.where)
            entries[key.text] = (key, _convert(value_node, loader, path, busy))
        return Map(tuple(entries.values()), where)
    finally:
        busy.discard(id(node))


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
    return f"a string ({node.text!r})" if isinstance(value, str) else f"a {type(value).__name__}"


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
