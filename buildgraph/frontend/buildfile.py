"""Buildfile.yaml: read a project's files into a checked `Project`; select targets in order."""

from __future__ import annotations

import glob
import heapq
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildgraph.errors import InputError, Location
from buildgraph.frontend import overrides as setting
from buildgraph.frontend.buildtarget import (
    ContextRef,
    TargetSpec,
    absolute,
    apply_override,
    draft_target,
    finish_target,
)
from buildgraph.frontend.buildvars import VarTable
from buildgraph.frontend.tasks import TaskSpec, read_tasks
from buildgraph.frontend.yamlmarks import (
    Map,
    Node,
    Scalar,
    Seq,
    as_list,
    as_map,
    as_str,
    did_you_mean,
    read_yaml,
)

__all__ = ["CacheSpec", "ContextRef", "Project", "TargetSpec", "load_project", "select_targets"]

TOP_KEYS = (
    "version",
    "vars",
    "cache",
    "executor",
    "insecure_registries",
    "include",
    "groups",
    "targets",
    "tasks",
)
ROOT_ONLY_KEYS = ("cache", "executor", "insecure_registries")
EXECUTOR_KEYS = ("kind", "scheduler")
EXECUTOR_KINDS = ("local", "dask")
CACHE_KEYS = ("dir", "remote", "mode")
CACHE_MODES = ("max", "min")
NAME_RULE = re.compile(r"[A-Za-z0-9_-]+\Z")  # bake's; no "." so `--set NAME.KEY` is unambiguous


@dataclass(frozen=True, slots=True)
class CacheSpec:
    dir: Path  # absolute; default <root Buildfile dir>/cache
    remote: str | None
    mode: str  # "max" | "min"


@dataclass(frozen=True, slots=True)
class ExecutorSpec:
    """Who carries out the plan: this machine, or the workers of a Dask scheduler."""

    kind: str = "local"  # local | dask
    scheduler: str | None = None  # dask: tcp://HOST:8786


def check_executor_kind(kind: str, where: Location | None = None) -> str:
    if kind not in EXECUTOR_KINDS:
        hint = did_you_mean(kind, list(EXECUTOR_KINDS))
        raise InputError(f"unknown executor kind {kind!r}{hint} (expected local or dask)", where)
    return kind


@dataclass(frozen=True, slots=True)
class Project:
    path: Path  # the root Buildfile
    files: tuple[Path, ...]  # every file read (root first, then includes as read)
    vars: tuple[tuple[str, str], ...]  # sorted
    cache: CacheSpec
    insecure_registries: tuple[str, ...]  # sorted, unique
    groups: tuple[tuple[str, tuple[str, ...]], ...]  # sorted; members sorted, unique
    targets: tuple[tuple[str, TargetSpec], ...]  # sorted by name
    tasks: tuple[tuple[str, TaskSpec], ...] = ()  # sorted by name; see frontend/tasks.py
    executor: ExecutorSpec = ExecutorSpec()

    def target(self, name: str) -> TargetSpec:
        found = dict(self.targets).get(name)
        if found is None:
            hint = did_you_mean(name, [known for known, _ in self.targets])
            raise InputError(f"unknown target {name!r}{hint}")
        return found


def load_project(
    path: Path, *, env: Mapping[str, str] | None = None, overrides: Sequence[str] = ()
) -> Project:
    """Reads the Buildfile at `path` and every file it includes, and checks them all.

    vars: `${NAME}` in any string value (not in keys) is the var NAME, `$$` a literal `$`; any
    other `$` is an error. A var's value is `--set vars.NAME=V`, else env[NAME] (env=None: no
    environment), else its default under `vars:`, which may use other vars. Only declared vars
    exist, so a typo is an error. vars are project-wide; see `VarTable` for files that disagree.
    An `include` pattern sees only the vars of its own file and of the files that include it.
    include: glob patterns, relative to the including file, each matching at least one file.
    A file reached twice is read once; including an ancestor is an include loop. Paths inside a
    file are relative to that file. `cache` and `insecure_registries` belong to the root file.
    args and vars take strings, numbers and booleans as written (`3.10` stays "3.10").
    overrides: `--set TARGET.KEY=VALUE`, TARGET a name or glob (`*`), see `overrides.KEYS`;
    repeated list keys collect, the rest last-wins; values are literal; `context` is relative
    to the root Buildfile's directory and `dockerfile` to the context."""
    root = Path(os.path.abspath(path))
    assigned, target_overrides = setting.parse_overrides(overrides)
    table = VarTable(env or {}, assigned)
    files = _read_files(root, table)
    table.check_assigned()
    defined: dict[str, tuple[Scalar, Node, Path]] = {}
    declared_groups: dict[str, tuple[Scalar, Node]] = {}
    defined_tasks: dict[str, tuple[Scalar, Node, Path]] = {}
    for file_path, doc in files:
        for key, node in _entries(doc, "targets"):
            _check_name(key, "target", {**defined_tasks, **defined})
            defined[key.text] = (key, node, file_path)
        for key, node in _entries(doc, "tasks"):  # tasks and targets share one namespace
            _check_name(key, "task", {**defined, **defined_tasks})
            defined_tasks[key.text] = (key, node, file_path)
        for key, node in _entries(doc, "groups"):
            _check_name(key, "group", declared_groups)
            declared_groups[key.text] = (key, node)
    drafts = {
        name: draft_target(key, node, file.parent, table)
        for name, (key, node, file) in defined.items()
    }
    for override in target_overrides:
        for name in setting.targets_of(override, defined):
            apply_override(drafts[name], override, root.parent)
    targets = {name: finish_target(name, drafts[name], defined) for name in sorted(defined)}
    cycle = _find_cycle({name: spec.depends_on for name, spec in targets.items()})
    if cycle:
        where = targets[cycle[0]].where
        raise InputError(f"dependency cycle: {' -> '.join((*cycle, cycle[0]))}", where)
    tasks = read_tasks(defined_tasks, targets, table, _find_cycle)
    root_doc = files[0][1]
    return Project(
        path=root,
        files=tuple(file_path for file_path, _ in files),
        vars=table.values(),
        cache=_cache(root_doc.get("cache"), root, table),
        insecure_registries=tuple(sorted(set(_strings(root_doc, "insecure_registries", table)))),
        groups=_groups(declared_groups, {**defined, **defined_tasks}, table),
        targets=tuple(targets.items()),
        tasks=tasks,
        executor=_executor(root_doc.get("executor"), table),
    )


def select_targets(project: Project, names: Sequence[str]) -> tuple[str, ...]:
    """`names` (targets or groups; none: group `default`, else every target) and everything
    they depend on, dependencies first; ties go by name, so the order is the same every time."""
    groups = dict(project.groups)
    targets = dict(project.targets)
    tasks = dict(project.tasks)
    if not names:
        names = ["default"] if "default" in groups else sorted(targets)
    wanted: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in groups:
            pending.extend(groups[name])
        elif name in targets:
            if name not in wanted:
                wanted.add(name)
                pending.extend(targets[name].depends_on)
        elif name in tasks:  # a task needs the image it runs in (a stage: see commands/tasks.py)
            pending.extend((tasks[name].image, *tasks[name].depends_on))
        else:
            hint = did_you_mean(name, [*groups, *targets, *tasks])
            raise InputError(f"unknown target or group {name!r}{hint}")
    waiting = {name: set(targets[name].depends_on) for name in wanted}
    users: dict[str, list[str]] = {name: [] for name in wanted}
    for name in wanted:
        for dependency in targets[name].depends_on:
            users[dependency].append(name)
    ready = [name for name, dependencies in waiting.items() if not dependencies]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = heapq.heappop(ready)
        order.append(name)
        for user in users[name]:
            waiting[user].discard(name)
            if not waiting[user]:
                heapq.heappush(ready, user)
    return tuple(order)


def _read_files(root: Path, table: VarTable) -> list[tuple[Path, Map]]:
    files: list[tuple[Path, Map]] = []

    def visit(path: Path, ancestors: tuple[Path, ...]) -> None:
        doc = _read_document(path, is_root=not ancestors)
        table.declare(doc.get("vars"), ancestors)
        files.append((path, doc))
        for item in as_list(doc.get("include") or Seq((), doc.where), "include"):
            pattern = table.expand(as_str(item, "include"), item.where)
            found = glob.glob(pattern, root_dir=path.parent, recursive=True)
            children = sorted({absolute(path.parent, match) for match in found} - {path})
            children = [child for child in children if child.is_file()]
            if not children:
                raise InputError(f"include {pattern!r} matches no file", item.where)
            for child in children:
                if child in ancestors:
                    chain = " -> ".join(str(each) for each in (*ancestors, path, child))
                    raise InputError(f"include loop: {chain}", item.where)
                if child not in {seen for seen, _ in files}:
                    visit(child, (*ancestors, path))

    visit(root, ())
    return files


def _read_document(path: Path, *, is_root: bool) -> Map:
    node = read_yaml(path)
    if node is None:
        raise InputError("empty Buildfile: expected 'version: 1'", Location(path, 1))
    doc = as_map(node, "Buildfile", keys=TOP_KEYS)
    version = doc.get("version")
    if version is None:
        raise InputError("missing 'version: 1'", doc.where)
    if not isinstance(version, Scalar) or version.text != "1":
        raise InputError("unsupported Buildfile version: expected 'version: 1'", version.where)
    for key, _ in doc.entries if not is_root else ():
        if key.text in ROOT_ONLY_KEYS:
            raise InputError(f"{key.text!r} can only be set in the root Buildfile", key.where)
    return doc


def _entries(doc: Map, key: str) -> tuple[tuple[Scalar, Node], ...]:
    value = doc.get(key)
    return as_map(value, key).entries if value is not None else ()


def _strings(doc: Map, key: str, table: VarTable) -> list[str]:
    value = doc.get(key)
    items = as_list(value, key) if value is not None else ()
    return [table.expand(as_str(item, key), item.where) for item in items]


def _check_name(key: Scalar, kind: str, defined: Mapping[str, object]) -> None:
    if key.text == "vars":
        raise InputError(f"{kind} name 'vars' is reserved for `--set vars.NAME=V`", key.where)
    if not NAME_RULE.match(key.text):
        raise InputError(
            f"invalid {kind} name {key.text!r}: use letters, digits, '_' and '-'", key.where
        )
    if key.text in defined:
        first = defined[key.text]
        raise InputError(
            f"{kind} {key.text!r} is defined twice: at {first[0].where} and here", key.where
        )


def _cache(node: Node | None, root: Path, table: VarTable) -> CacheSpec:
    spec = as_map(node, "cache", keys=CACHE_KEYS) if node is not None else Map((), Location(root))
    values = {
        key.text: (table.expand(as_str(value, f"cache.{key.text}"), value.where), value.where)
        for key, value in spec.entries
        if spec.get(key.text) is not None
    }
    mode, where = values.get("mode", ("max", spec.where))
    if mode not in CACHE_MODES:
        raise InputError(f"cache.mode: expected 'max' or 'min', got {mode!r}", where)
    directory = values.get("dir", ("cache", spec.where))[0]
    remote = values["remote"][0] if "remote" in values else None
    return CacheSpec(dir=absolute(root.parent, directory), remote=remote, mode=mode)


def _executor(node: Node | None, table: VarTable) -> ExecutorSpec:
    if node is None:
        return ExecutorSpec()
    spec = as_map(node, "executor", keys=EXECUTOR_KEYS)
    values = {
        key.text: (table.expand(as_str(value, f"executor.{key.text}"), value.where), value.where)
        for key, value in spec.entries
        if spec.get(key.text) is not None
    }
    kind, where = values.get("kind", ("local", spec.where))
    check_executor_kind(kind, where)
    scheduler = values["scheduler"][0] if "scheduler" in values else None
    if kind == "dask" and not scheduler:
        raise InputError("executor: kind dask needs a scheduler (tcp://HOST:8786)", spec.where)
    return ExecutorSpec(kind, scheduler)


def _groups(
    declared: Mapping[str, tuple[Scalar, Node]], targets: Mapping[str, object], table: VarTable
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    groups: dict[str, tuple[str, ...]] = {}
    for name, (key, node) in declared.items():
        if name in targets:
            raise InputError(f"group {name!r} has the name of a target", key.where)
        members: set[str] = set()
        empty = isinstance(node, Scalar) and node.value is None
        for item in () if empty else as_list(node, f"groups.{name}"):
            member = table.expand(as_str(item, f"groups.{name}"), item.where)
            if member not in targets and member not in declared:
                hint = did_you_mean(member, [*targets, *declared])
                raise InputError(f"unknown target or group {member!r}{hint}", item.where)
            members.add(member)
        groups[name] = tuple(sorted(members))
    cycle = _find_cycle(groups)
    if cycle:
        where = declared[cycle[0]][0].where
        raise InputError(f"group cycle: {' -> '.join((*cycle, cycle[0]))}", where)
    return tuple(sorted(groups.items()))


def _find_cycle(graph: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A cycle in `graph`, if any, starting at its smallest name (so file order never shows)."""
    done: set[str] = set()
    active: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in active:
            return active[active.index(node) :]
        if node in done or node not in graph:
            return None
        active.append(node)
        for successor in graph[node]:
            if cycle := visit(successor):
                return cycle
        active.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if cycle := visit(start):
            first = cycle.index(min(cycle))
            return cycle[first:] + cycle[:first]
    return None
