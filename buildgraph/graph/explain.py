"""Why must a step be built? Compare what it reads now with what it read the last time.

A summary holds the step's key fields by name (the lists of `graph.keys`), so whatever
changes a key is named here too."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from buildgraph.frontend.ignore import IgnoreMatcher
from buildgraph.graph.context import StatCache, walk_selection
from buildgraph.graph.keys import key_fields
from buildgraph.graph.steps import ConfigStep, CopyStep, RunStep, SourceStep, Step

Summary = dict[str, Any]  # JSON-able: what a step read, by name

KINDS = {SourceStep: "source", RunStep: "run", CopyStep: "copy", ConfigStep: "config"}
# How a changed key field is named to the user; fields not listed say "<field> changed".
LABELS = {
    ("source", "digest"): "base image digest",
    ("source", "platform"): "platform",
    ("run", "argv"): "instruction",
    ("run", "user"): "USER",
    ("run", "workdir"): "WORKDIR",
    ("run", "network"): "--network",
    ("run", "files"): "heredoc",
    ("run", "mounts"): "--mount",
    ("run", "security"): "--security",
    ("copy", "patterns"): "sources",
    ("copy", "dest"): "destination",
    ("copy", "inline"): "heredoc",
    ("copy", "chown"): "--chown",
    ("copy", "chmod"): "--chmod",
    ("copy", "add"): "ADD or COPY",
    ("copy", "unknown_owner_is_root"): "owner of an unknown USER",
    ("config", "instruction"): "instruction",
    ("config", "author"): "MAINTAINER",
}


def summarize(step: Step, ignores: Mapping[str, IgnoreMatcher], stat_cache: StatCache) -> Summary:
    """The inputs of a step in a form later runs can compare field by field."""
    fields = key_fields(step)
    parent = fields.pop("parent", None)
    summary: Summary = {"kind": KINDS[type(step)], "fields": fields}
    if parent is not None:
        summary["parent"] = parent
    if isinstance(step, CopyStep):
        fields["source"] = key_fields(step.source)
        summary["instruction"] = step.title.split("] ", 1)[-1]
        summary["files"] = _context_files(step, ignores, stat_cache)
    return summary


def _context_files(
    step: CopyStep, ignores: Mapping[str, IgnoreMatcher], stat_cache: StatCache
) -> dict[str, str]:
    files: dict[str, str] = {}
    if step.source.context and not step.source.stage_key:
        ignore = ignores.get(step.source.context) or IgnoreMatcher(())
        context = Path(step.source.context)
        for entry, path, info in walk_selection(context, step.source.paths, ignore):
            content = stat_cache.content_hash(path, info) if entry.kind == "file" else ""
            files[entry.path] = f"{entry.kind}:{entry.mode:o}:{entry.target}:{content}"
    return files


def reason(now: Summary, before: Summary | None, parent_changed: bool) -> str:
    """One line saying what changed; the step's own inputs are named before its parent."""
    if before is None:
        return "no earlier build"
    if now["kind"] != before.get("kind"):
        return "instruction changed"
    changed = _changed_own_input(now, before)
    if changed:
        return changed
    if parent_changed or now.get("parent") != before.get("parent"):
        return "parent step changed"
    return "not in the cache"


def _changed_own_input(now: Summary, before: Summary) -> str:
    if now["kind"] == "copy":
        # As written first (the user's edit), then the files it reads.
        if now["instruction"] != before.get("instruction"):
            return "instruction changed"
        changed = _changed_files(now["files"], before.get("files", {}))
        if changed:
            return changed
    if "fields" not in before:
        return ""  # a record written before summaries held the key fields: nothing to compare
    for name, value in now["fields"].items():
        old = before["fields"].get(name)
        if value != old:
            return _describe(now["kind"], name, value, old)
    return ""


def _describe(kind: str, name: str, now: Any, before: Any) -> str:
    if (kind, name) == ("source", "image"):
        return f"base image changed: {before} → {now}"
    if (kind, name) == ("run", "env"):
        return _changed_env(dict(now), dict(before or ()))
    if (kind, name) == ("run", "mounts") and _mounted(now) != _mounted(before):
        return "a stage it mounts (--mount from=) changed"
    if (kind, name) == ("copy", "source"):
        return _changed_source(now, before or {})
    if (kind, name) == ("config", "config"):
        return _changed_config(now, before or {})
    return f"{LABELS.get((kind, name), name)} changed"


def _mounted(mounts: Any) -> list[str]:
    return [mount["stage_key"] for mount in mounts or () if mount.get("stage_key")]


def _changed_source(now: dict[str, Any], before: dict[str, Any]) -> str:
    if now.get("stage") != before.get("stage"):
        return "the stage it copies from changed"
    if now.get("paths") != before.get("paths"):
        return "the files it selects changed"
    return "the content it copies changed"


def _changed_config(now: dict[str, Any], before: dict[str, Any]) -> str:
    for name, value in now.items():
        if value != before.get(name):
            return f"image config {name} changed"
    return "image config changed"


def _changed_env(now: dict[str, str], before: dict[str, str]) -> str:
    for name in sorted(set(now) | set(before)):
        if now.get(name) != before.get(name):
            old, new = before.get(name, "(unset)"), now.get(name, "(unset)")
            return f"build arg or env {name} changed: {old} → {new}"
    return "env changed"


def _changed_files(now: dict[str, str], before: dict[str, str]) -> str:
    for path in sorted(set(now) | set(before)):
        if path not in before:
            return f"file {path} added"
        if path not in now:
            return f"file {path} removed"
        if now[path] != before[path]:
            return f"file {path} changed"
    return ""
