"""One Buildfile target: its YAML mapping, then `--set` overrides, then a checked TargetSpec."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from buildgraph.errors import InputError, Location, shorten
from buildgraph.frontend import overrides as setting
from buildgraph.frontend.buildvars import VarTable
from buildgraph.frontend.yamlmarks import (
    Map,
    Node,
    Scalar,
    as_bool,
    as_list,
    as_map,
    as_str,
    as_text,
    did_you_mean,
)
from buildgraph.registry.reference import parse_reference

TARGET_KEYS = ("context", "dockerfile", "target", "args", "contexts", "depends_on", "tags",
               "push", "outputs", "platform", "secrets")  # fmt: skip
PLATFORM_RULE = re.compile(r"[a-z0-9_]+/[a-z0-9_]+(/[a-z0-9_]+)?\Z")


@dataclass(frozen=True, slots=True)
class ContextRef:  # a named context of a target
    kind: str  # "target" | "dir" | "image"
    value: str  # target name | absolute dir path | image reference (as written)


@dataclass(frozen=True, slots=True)
class TargetSpec:
    name: str  # a label only: renaming a target must not change a cache key
    context: Path  # absolute
    dockerfile: Path  # absolute (relative to context, as docker does)
    target: str | None  # stage; None: the last one
    args: tuple[tuple[str, str], ...]  # sorted
    contexts: tuple[tuple[str, ContextRef], ...]  # sorted by name
    depends_on: tuple[str, ...]  # sorted; includes the targets of `target:` contexts
    tags: tuple[str, ...]  # sorted, unique
    push: bool
    outputs: tuple[str, ...]  # buildx-style output specs as written; sorted, unique
    platform: str | None
    secrets: tuple[tuple[str, str], ...]  # id -> absolute src file, sorted by id
    where: Location  # the target's name line; for messages only


@dataclass(slots=True)
class TargetDraft:  # a target between its YAML and its TargetSpec; only overrides change it
    where: Location
    context: tuple[Path, Location]
    dockerfile: tuple[str, Location]
    target: str | None = None
    platform: tuple[str, Location] | None = None
    push: bool = False
    args: dict[str, str] = field(default_factory=dict)
    contexts: dict[str, tuple[ContextRef, Location]] = field(default_factory=dict)
    depends_on: list[tuple[str, Location]] = field(default_factory=list)
    tags: list[tuple[str, Location]] = field(default_factory=list)
    outputs: list[tuple[str, Location]] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)
    overridden: set[str] = field(default_factory=set)  # list keys a --set has replaced


def draft_target(key: Scalar, node: Node, base: Path, table: VarTable) -> TargetDraft:
    spec = as_map(node, f"targets.{key.text}", keys=TARGET_KEYS)
    prefix = f"targets.{key.text}."

    def text(name: str, default: str | None = None) -> tuple[str, Location] | None:
        value = spec.get(name)
        if value is None:
            return None if default is None else (default, key.where)
        return table.expand(as_str(value, prefix + name), value.where), value.where

    def strings(name: str) -> list[tuple[str, Location]]:
        value = spec.get(name)
        items = as_list(value, prefix + name) if value is not None else ()
        return [
            (table.expand(as_str(item, prefix + name), item.where), item.where) for item in items
        ]

    def mapping(name: str, read: Callable[[Node, str], str]) -> list[tuple[str, str, Location]]:
        value = spec.get(name)
        entries = as_map(value, prefix + name).entries if value is not None else ()
        return [
            (
                entry.text,
                table.expand(read(item, f"{prefix}{name}.{entry.text}"), item.where),
                item.where,
            )
            for entry, item in entries
        ]

    context, context_where = text("context", ".") or (".", key.where)
    push = spec.get("push")
    draft = TargetDraft(
        where=key.where,
        context=(absolute(base, context), context_where),
        dockerfile=text("dockerfile", "Dockerfile") or ("Dockerfile", key.where),
        target=(text("target") or (None,))[0],
        platform=text("platform"),
        push=as_bool(push, prefix + "push") if push is not None else False,
        args={name: value for name, value, _ in mapping("args", as_text)},
        contexts={
            name: (_context(value, base, where), where)
            for name, value, where in mapping("contexts", as_str)
        },
        depends_on=strings("depends_on"),
        tags=strings("tags"),
        outputs=strings("outputs"),
    )
    secrets = spec.get("secrets")
    if isinstance(secrets, Map) or secrets is None:
        pairs = [(name, value) for name, value, _ in mapping("secrets", as_str)]
    else:
        pairs = [_secret(text, where) for text, where in strings("secrets")]
    draft.secrets = {name: str(absolute(base, source)) for name, source in pairs}
    return draft


def _secret(text: str, where: Location) -> tuple[str, str]:
    """`id=NAME,src=PATH`, as `docker build --secret` takes it."""
    fields = dict(part.partition("=")[::2] for part in text.split(","))
    if not fields.get("id") or not fields.get("src") or set(fields) - {"id", "src", "type"}:
        raise InputError(f"secret {text!r}: expected 'id=NAME,src=PATH'", where)
    return fields["id"], fields["src"]


def _context(value: str, base: Path, where: Location) -> ContextRef:
    if value.startswith("target:"):
        return ContextRef("target", value.removeprefix("target:"))
    if value.startswith("docker-image://"):
        reference = value.removeprefix("docker-image://")
        check_reference(reference, where)
        return ContextRef("image", reference)
    if "://" in value:
        raise InputError(
            f"context {value!r}: expected 'target:NAME', 'docker-image://REF' or a directory",
            where,
        )
    directory = absolute(base, value)
    if not directory.is_dir():
        raise InputError(f"context directory {directory} does not exist", where)
    return ContextRef("dir", str(directory))


def apply_override(draft: TargetDraft, override: setting.Override, root_dir: Path) -> None:
    value, where = override.value, override.where
    if override.key == "args":
        draft.args[override.arg] = value
    elif override.key in setting.LIST_KEYS:
        # bake: the --set values for one target and key together replace the file's list
        if override.key not in draft.overridden:
            draft.overridden.add(override.key)
            setattr(draft, override.key, [])
        if value:
            getattr(draft, override.key).append((value, where))
    elif override.key == "push":
        draft.push = setting.parse_bool(override)
    elif override.key == "context":
        draft.context = (absolute(root_dir, value), where)
    elif override.key == "dockerfile":
        draft.dockerfile = (value, where)
    elif override.key == "target":
        draft.target = value or None
    elif override.key == "platform":
        draft.platform = (value, where) if value else None


def _is(path: Path, kind: Callable[[int], bool]) -> bool:
    """Path.is_dir() and is_file() raise for a name too long; this says no."""
    try:
        return kind(path.stat().st_mode)
    except OSError:
        return False


def finish_target(name: str, draft: TargetDraft, defined: Mapping[str, object]) -> TargetSpec:
    context, where = draft.context
    if not _is(context, stat.S_ISDIR):
        raise InputError(f"context directory {shorten(str(context), 200)} does not exist", where)
    text, where = draft.dockerfile
    dockerfile = absolute(context, text)
    if not _is(dockerfile, stat.S_ISREG):
        raise InputError(f"Dockerfile {shorten(str(dockerfile), 200)} does not exist", where)
    implied = [(ref.value, where) for ref, where in draft.contexts.values() if ref.kind == "target"]
    for dependency, where in (*draft.depends_on, *implied):
        if dependency not in defined:
            hint = did_you_mean(dependency, defined)
            raise InputError(f"unknown target {dependency!r}{hint}", where)
    for tag, where in draft.tags:
        check_reference(tag, where)
    if draft.platform and not PLATFORM_RULE.match(draft.platform[0]):
        raise InputError(
            f"invalid platform {draft.platform[0]!r}: expected os/arch[/variant]", draft.platform[1]
        )
    return TargetSpec(
        name=name,
        context=context,
        dockerfile=dockerfile,
        target=draft.target,
        args=tuple(sorted(draft.args.items())),
        contexts=tuple(sorted((key, ref) for key, (ref, _) in draft.contexts.items())),
        depends_on=tuple(sorted({dependency for dependency, _ in (*draft.depends_on, *implied)})),
        tags=tuple(sorted({tag for tag, _ in draft.tags})),
        push=draft.push,
        outputs=tuple(sorted({output for output, _ in draft.outputs})),
        platform=draft.platform[0] if draft.platform else None,
        secrets=tuple(sorted(draft.secrets.items())),
        where=draft.where,
    )


def absolute(base: Path, text: str) -> Path:
    return Path(os.path.normpath(base / text))  # lexical, like docker; an absolute text wins


def check_reference(text: str, where: Location) -> None:
    try:
        parse_reference(text)
    except InputError as err:
        raise InputError(str(err), where) from err
