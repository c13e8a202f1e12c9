"""`--set TARGET.KEY=VALUE` overrides for a Buildfile's targets (buildx bake semantics)."""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from buildgraph.errors import InputError, Location
from buildgraph.frontend.buildvars import VAR_NAME
from buildgraph.frontend.yamlmarks import did_you_mean

KEYS = ("args", "context", "dockerfile", "outputs", "platform", "push", "tags", "target")
LIST_KEYS = ("outputs", "tags")  # repeated --set values collect; the list replaces the file's
_TRUE = ("1", "t", "T", "TRUE", "true", "True")  # Go's strconv.ParseBool, as bake uses
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


@dataclass(frozen=True, slots=True)
class Override:
    pattern: str  # target name or fnmatch pattern (`*` for every target)
    key: str  # one of KEYS
    arg: str  # the NAME of `args.NAME`, else ""
    value: str
    where: Location  # Location("--set SPEC"): how messages name it


def parse_overrides(
    specs: Sequence[str],
) -> tuple[dict[str, tuple[str, Location]], tuple[Override, ...]]:
    """The `--set vars.NAME=V` assignments (last wins) and the target overrides, in order."""
    assigned: dict[str, tuple[str, Location]] = {}
    overrides: list[Override] = []
    for spec in specs:
        where = Location(f"--set {spec}")
        left, equals, value = spec.partition("=")
        pattern, dot, key = left.partition(".")
        if not equals or not dot or not pattern or not key:
            raise InputError("expected TARGET.KEY=VALUE (or vars.NAME=VALUE)", where)
        if pattern == "vars":
            if not VAR_NAME.match(key):
                raise InputError(f"invalid var name {key!r}", where)
            assigned[key] = (value, where)
            continue
        key, _, arg = key.partition(".")
        if key not in KEYS:
            raise InputError(f"cannot set {key!r}{did_you_mean(key, KEYS)}", where)
        if (key == "args") != bool(arg):
            raise InputError("use args.NAME=VALUE to set a build arg", where)
        overrides.append(Override(pattern, key, arg, value, where))
    return assigned, tuple(overrides)


def targets_of(override: Override, names: Collection[str]) -> list[str]:
    """The target names `override.pattern` matches; none is an error."""
    matches = fnmatch.filter(sorted(names), override.pattern)
    if not matches:
        hint = did_you_mean(override.pattern, names)
        raise InputError(f"no target matches {override.pattern!r}{hint}", override.where)
    return matches


def parse_bool(override: Override) -> bool:
    if override.value in _TRUE:
        return True
    if override.value in _FALSE:
        return False
    raise InputError(f"push: expected true or false, got {override.value!r}", override.where)
