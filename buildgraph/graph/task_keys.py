"""Task cache keys: xxh3-128 of exactly the fields that determine a task's result. Pure."""

from __future__ import annotations

import json
from dataclasses import dataclass

import xxhash

from buildgraph.frontend.tasks import DEPENDENCY_DIR, OUTPUT_DIR, SOURCE_DIR

TASK_KEY_VERSION = 1  # bump when the meaning of a task key changes; old entries then miss
TASK_KEY_FIELDS = (
    "image",
    "argv",
    "env",
    "workdir",
    "user",
    "network",
    "inputs",
    "outputs",
    "depends",
    "layout",
)


@dataclass(frozen=True, slots=True)
class TaskInputs:
    """What a task's result depends on, once its image and dependencies are known."""

    image: str  # the cache key of the image's last step
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]  # sorted
    workdir: str
    user: str
    network: str
    inputs: tuple[tuple[str, str], ...]  # (path relative to the task's Buildfile, digest), sorted
    outputs: tuple[str, ...]  # declared paths under OUTPUT_DIR: what is kept of a run
    # (name, outputs digest) of each task it depends on: the name is where it reads them
    # (/deps/NAME), the digest what they hold. Not the dependency's key: a dependency that
    # reran and wrote the same outputs changes nothing here (Bazel's early cutoff).
    depends: tuple[tuple[str, str], ...]
    # Where the sandbox puts sources, outputs and dependencies: a change of these paths
    # changes what a command finds, so it is part of every key.
    layout: tuple[str, str, str] = (SOURCE_DIR, OUTPUT_DIR, DEPENDENCY_DIR)


def task_key(task: TaskInputs) -> str:
    doc = {
        "kind": f"buildgraph.task.v{TASK_KEY_VERSION}",
        **{name: getattr(task, name) for name in TASK_KEY_FIELDS},
    }
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return xxhash.xxh3_128_hexdigest(text.encode())


def files_digest(files: tuple[tuple[str, str], ...]) -> str:
    """One digest of (path, content digest) pairs: a task's outputs as a dependency sees them."""
    text = json.dumps(sorted(files), separators=(",", ":"), ensure_ascii=False)
    return xxhash.xxh3_128_hexdigest(text.encode())


def key_fields(task: TaskInputs) -> dict[str, object]:
    """The key's fields as JSON values: what a task's last run is remembered by (for `plan`)."""
    return json.loads(json.dumps({name: getattr(task, name) for name in TASK_KEY_FIELDS}))


def explain(now: TaskInputs, before: dict[str, object] | None) -> str:
    """Why a task's key differs from its last run's, in a few words. Pure."""
    if before is None:
        return "never run here"
    fields = key_fields(now)
    if fields["inputs"] != before.get("inputs"):
        old = dict(map(tuple, before.get("inputs") or []))  # type: ignore[arg-type]
        new = dict(now.inputs)
        changed = sorted(p for p in new.keys() | old.keys() if new.get(p) != old.get(p))
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        return f"input {changed[0]} changed{more}" if changed else "inputs changed"
    words = {"image": "the image changed", "depends": "a dependency's outputs changed"}
    for name in TASK_KEY_FIELDS:
        if fields[name] != before.get(name):
            return words.get(name, f"{name} changed")
    return "its cache entry is gone"
