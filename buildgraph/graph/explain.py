"""Why must a step be built? Compare what it reads now with what it read the last time."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from buildgraph.frontend.ignore import IgnoreMatcher
from buildgraph.graph.context import StatCache, walk_selection
from buildgraph.graph.steps import ConfigStep, CopyStep, RunStep, SourceStep, Step

Summary = dict[str, Any]  # JSON-able: what a step read, by name


def summarize(step: Step, ignores: Mapping[str, IgnoreMatcher], stat_cache: StatCache) -> Summary:
    """The inputs of a step in a form later runs can compare field by field."""
    match step:
        case SourceStep():
            return {"kind": "source", "image": step.image, "digest": step.digest}
        case RunStep():
            return {
                "kind": "run",
                "parent": step.parent,
                "instruction": list(step.argv),
                "env": dict(step.env),
                "user": step.user,
                "workdir": step.workdir,
                "mounted": [mount.stage_key for mount in step.mounts if mount.stage_key],
            }
        case CopyStep():
            files: dict[str, str] = {}
            if step.source.context and not step.source.stage_key:
                ignore = ignores.get(step.source.context) or IgnoreMatcher(())
                context = Path(step.source.context)
                for entry, path, info in walk_selection(context, step.source.paths, ignore):
                    content = stat_cache.content_hash(path, info) if entry.kind == "file" else ""
                    files[entry.path] = f"{entry.kind}:{entry.mode:o}:{entry.target}:{content}"
            return {
                "kind": "copy",
                "parent": step.parent,
                "instruction": step.title.split("] ", 1)[-1],
                "from": step.source.stage_key,
                "files": files,
            }
        case ConfigStep():
            return {"kind": "config", "parent": step.parent, "instruction": step.instruction}
    raise TypeError(step)


def reason(now: Summary, before: Summary | None, parent_changed: bool) -> str:
    """One line saying what changed; the step's own inputs are named before its parent."""
    if before is None:
        return "no earlier build"
    if now["kind"] != before.get("kind"):
        return "instruction changed"
    if now["kind"] == "source":
        if now["image"] != before.get("image"):
            return f"base image changed: {before.get('image')} → {now['image']}"
        if now["digest"] != before.get("digest"):
            return "base image digest changed"
        return "not in the cache"
    if now["kind"] == "run":
        changed = _changed_env(now["env"], before.get("env", {}))
        if now["instruction"] != before.get("instruction"):
            return "instruction changed"
        if changed:
            return changed
        for name in ("user", "workdir"):
            if now[name] != before.get(name):
                return f"{name.upper() if name == 'user' else 'WORKDIR'} changed"
        if now.get("mounted", []) != before.get("mounted", []):
            return "a stage it mounts (--mount from=) changed"
    if now["kind"] == "copy":
        if now["instruction"] != before.get("instruction"):
            return "instruction changed"
        changed = _changed_files(now["files"], before.get("files", {}))
        if changed:
            return changed
        if now["from"] != before.get("from"):
            return "the stage it copies from changed"
    if now["kind"] == "config" and now["instruction"] != before.get("instruction"):
        return "instruction changed"
    if parent_changed or now.get("parent") != before.get("parent"):
        return "parent step changed"
    return "not in the cache"


def _changed_env(now: dict[str, str], before: dict[str, str]) -> str:
    for name in sorted(set(now) | set(before)):
        if now.get(name) != before.get(name):
            old, new = before.get(name, "(unset)"), now.get(name, "(unset)")
            return f"build arg or env {name} changed: {old} → {new}"
    return ""


def _changed_files(now: dict[str, str], before: dict[str, str]) -> str:
    for path in sorted(set(now) | set(before)):
        if path not in before:
            return f"file {path} added"
        if path not in now:
            return f"file {path} removed"
        if now[path] != before[path]:
            return f"file {path} changed"
    return ""
