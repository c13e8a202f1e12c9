"""The `tasks:` section of Buildfile.yaml: commands run in a target's image, as TaskSpecs."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildgraph.errors import InputError, Location
from buildgraph.frontend.buildvars import VarTable
from buildgraph.frontend.yamlmarks import (
    Map,
    Node,
    Scalar,
    as_list,
    as_map,
    as_str,
    as_text,
    did_you_mean,
)

TASK_KEYS = ("image", "run", "workdir", "user", "env", "network", "inputs", "outputs",
             "output_dir", "depends_on")  # fmt: skip
NETWORKS = ("none", "host")
SOURCE_DIR = "/src"  # where the task's inputs are, read-only, at their paths in the repository
OUTPUT_DIR = "/out"  # the only place outputs are copied from
DEPENDENCY_DIR = "/deps"  # /deps/NAME: the outputs of the task NAME it depends on, read-only
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class InputGlob:
    pattern: str  # relative to `TaskSpec.base`, `**` for any depth
    where: Location


@dataclass(frozen=True, slots=True)
class TaskSpec:
    name: str  # a label only: it names the output dir and /deps/NAME, never part of a key
    image: str  # a target's name
    stage: str | None  # a stage of that target's Dockerfile; None: the target's own image
    argv: tuple[str, ...]  # `run:` as a list, or ("/bin/sh", "-c", text) for a string
    workdir: str
    user: str
    env: tuple[tuple[str, str], ...]  # sorted
    network: str  # "none" | "host"
    base: Path  # the directory of the Buildfile that defines the task: inputs are relative to it
    inputs: tuple[InputGlob, ...]
    outputs: tuple[str, ...]  # sorted, relative to OUTPUT_DIR, normalized, never escaping it
    output_dir: Path  # absolute: where the outputs are copied on the host
    depends_on: tuple[str, ...]  # sorted task names
    where: Location  # the task's name line; for messages only

    @property
    def image_name(self) -> str:
        """The name of the image it runs in, as `plan` and the summary show it."""
        return f"{self.image}:{self.stage}" if self.stage else self.image


def read_tasks(
    defined: Mapping[str, tuple[Scalar, Node, Path]],
    targets: Mapping[str, object],
    table: VarTable,
    find_cycle: Callable[[Mapping[str, Sequence[str]]], list[str] | None],
) -> tuple[tuple[str, TaskSpec], ...]:
    """Every task, checked: its image target exists, its dependencies are tasks, no cycle.
    `defined`: task name -> (name key, value, defining file), names already checked."""
    tasks = {
        name: _task(key, node, file.parent, table, targets, defined)
        for name, (key, node, file) in sorted(defined.items())
    }
    cycle = find_cycle({name: spec.depends_on for name, spec in tasks.items()})
    if cycle:
        raise InputError(
            f"task dependency cycle: {' -> '.join((*cycle, cycle[0]))}", tasks[cycle[0]].where
        )
    return tuple(tasks.items())


def _task(
    key: Scalar,
    node: Node,
    base: Path,
    table: VarTable,
    targets: Mapping[str, object],
    tasks: Mapping[str, object],
) -> TaskSpec:
    name = key.text
    spec = as_map(node, f"tasks.{name}", keys=TASK_KEYS)
    prefix = f"tasks.{name}."

    def text(field: str) -> tuple[str, Location] | None:
        value = spec.get(field)
        if value is None:
            return None
        return table.expand(as_str(value, prefix + field), value.where), value.where

    image = text("image")
    if image is None:
        raise InputError(f"task {name}: missing 'image' (a target, or target:stage)", key.where)
    target, _, stage = image[0].partition(":")
    if target not in targets:
        hint = did_you_mean(target, list(targets))
        raise InputError(f"task {name}: unknown image target {target!r}{hint}", image[1])
    if ":" in image[0] and not stage:
        raise InputError(f"task {name}: empty stage in image {image[0]!r}", image[1])
    network, network_where = text("network") or ("none", key.where)
    if network not in NETWORKS:
        raise InputError(
            f"task {name}: network: expected 'none' or 'host', got {network!r}", network_where
        )
    workdir, workdir_where = text("workdir") or ("/", key.where)
    if not workdir.startswith("/"):
        raise InputError(f"task {name}: workdir must be absolute, got {workdir!r}", workdir_where)
    output_dir = text("output_dir")
    return TaskSpec(
        name=name,
        image=target,
        stage=stage.lower() or None,  # stage names are case-insensitive, as in docker
        argv=_argv(spec, prefix, table, key),
        workdir=posixpath.normpath(workdir),
        user=(text("user") or ("", key.where))[0],
        env=_env(spec.get("env"), prefix, table),
        network=network,
        base=base,
        inputs=tuple(
            InputGlob(_relative_pattern(pattern, where, name), where)
            for pattern, where in _strings(spec, "inputs", prefix, table)
        ),
        outputs=tuple(
            sorted(
                {
                    _output(path, where, name)
                    for path, where in _strings(spec, "outputs", prefix, table)
                }
            )
        ),
        output_dir=base / (output_dir[0] if output_dir else f"out/{name}"),
        depends_on=_dependencies(spec, prefix, table, tasks, name),
        where=key.where,
    )


def _argv(spec: Map, prefix: str, table: VarTable, key: Scalar) -> tuple[str, ...]:
    value = spec.get("run")
    if value is None:
        raise InputError(f"task {key.text}: missing 'run' (a command line or a list)", key.where)
    if isinstance(value, Scalar):
        return ("/bin/sh", "-c", table.expand(as_str(value, prefix + "run"), value.where))
    argv = tuple(
        table.expand(as_text(item, prefix + "run"), item.where) for item in as_list(value, "run")
    )
    if not argv:
        raise InputError(f"task {key.text}: 'run' is an empty list", value.where)
    return argv


def _env(node: Node | None, prefix: str, table: VarTable) -> tuple[tuple[str, str], ...]:
    if node is None:
        return ()
    values = {}
    for name, value in as_map(node, prefix + "env").entries:
        if not ENV_NAME.match(name.text):
            raise InputError(f"{prefix}env: invalid variable name {name.text!r}", name.where)
        values[name.text] = table.expand(as_text(value, f"{prefix}env.{name.text}"), value.where)
    return tuple(sorted(values.items()))


def _strings(spec: Map, field: str, prefix: str, table: VarTable) -> list[tuple[str, Location]]:
    value = spec.get(field)
    items = as_list(value, prefix + field) if value is not None else ()
    return [(table.expand(as_str(item, prefix + field), item.where), item.where) for item in items]


def _relative_pattern(pattern: str, where: Location, name: str) -> str:
    parts = pattern.split("/")
    if pattern.startswith("/") or ".." in parts or not pattern:
        raise InputError(
            f"task {name}: input {pattern!r} must be a path inside the repository, relative to "
            "its Buildfile",
            where,
        )
    return pattern


def _output(path: str, where: Location, name: str) -> str:
    """`path` relative to OUTPUT_DIR; one that leaves it (or is it) is refused here."""
    absolute = posixpath.normpath(posixpath.join(OUTPUT_DIR, path))
    inside = posixpath.relpath(absolute, OUTPUT_DIR)
    if not absolute.startswith(OUTPUT_DIR + "/") or inside.startswith(".."):
        raise InputError(
            f"task {name}: output {path!r} escapes the output dir {OUTPUT_DIR}: declare paths "
            f"under {OUTPUT_DIR}/",
            where,
        )
    return inside


def _dependencies(
    spec: Map, prefix: str, table: VarTable, tasks: Mapping[str, object], name: str
) -> tuple[str, ...]:
    found = set()
    for other, where in _strings(spec, "depends_on", prefix, table):
        if other not in tasks:
            hint = did_you_mean(other, list(tasks))
            raise InputError(f"task {name}: depends_on: unknown task {other!r}{hint}", where)
        found.add(other)
    return tuple(sorted(found))
