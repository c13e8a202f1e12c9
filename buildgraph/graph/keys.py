"""Cache keys: xxh3-128 of exactly the fields that determine a step's result. Pure."""

from __future__ import annotations

import json
from dataclasses import asdict

import xxhash

from buildgraph.graph.steps import ConfigStep, CopyStep, RunStep, SourceStep, Step

KEY_VERSION = 1  # bump when the meaning of a key changes; old cache entries then miss

SOURCE_KEY_FIELDS = ("image", "digest", "platform")
RUN_KEY_FIELDS = (
    "parent",
    "argv",
    "env",
    "user",
    "workdir",
    "network",
    "files",
    "mounts",
    "security",
)
# The context path is not in the key: its content digest is, so a moved checkout still hits.
COPY_KEY_FIELDS = (
    "parent",
    "patterns",
    "dest",
    "inline",
    "chown",
    "chmod",
    "add",
    "unknown_owner_is_root",
)
CONFIG_KEY_FIELDS = ("parent", "instruction", "config", "author")


def step_key(step: Step) -> str:
    match step:
        case SourceStep():
            return _digest("source", step, SOURCE_KEY_FIELDS)
        case RunStep():
            return _digest("run", step, RUN_KEY_FIELDS)
        case CopyStep():
            source = {
                "stage": step.source.stage_key,
                "paths": step.source.paths,
                "digest": step.source.digest,
            }
            return _digest("copy", step, COPY_KEY_FIELDS, source=source)
        case ConfigStep():
            return _digest("config", step, CONFIG_KEY_FIELDS)
    raise TypeError(f"not a step: {step!r}")


def _digest(kind: str, step: Step, names: tuple[str, ...], **extra: object) -> str:
    fields = {name: _plain(getattr(step, name)) for name in names}
    doc = {"kind": f"buildgraph.{kind}.v{KEY_VERSION}", **fields, **extra}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return xxhash.xxh3_128_hexdigest(text.encode())


def _plain(value: object) -> object:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)  # type: ignore[call-overload]
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value
