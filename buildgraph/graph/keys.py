"""Cache keys: xxh3-128 of exactly the fields that determine a step's result. Pure."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

import xxhash

from buildgraph.graph.steps import (
    ConfigStep,
    CopySource,
    CopyStep,
    RunMount,
    RunStep,
    SourceStep,
    Step,
)
from buildgraph.image.config import Healthcheck, RuntimeConfig

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
# The source is keyed by COPY_SOURCE_KEY_FIELDS, under the name "source".
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
# Name in the key → field of CopySource. The context path is not in the key: its content
# digest is, so a moved checkout still hits.
COPY_SOURCE_KEY_FIELDS = {"stage": "stage_key", "paths": "paths", "digest": "digest"}
RUN_MOUNT_KEY_FIELDS = (
    "type",
    "target",
    "id",
    "source",
    "digest",
    "stage_key",
    "readonly",
    "required",
    "mode",
    "uid",
    "gid",
    "size",
    "env",
)
RUNTIME_CONFIG_KEY_FIELDS = (
    "user",
    "env",
    "entrypoint",
    "cmd",
    "working_dir",
    "labels",
    "exposed_ports",
    "volumes",
    "stop_signal",
    "healthcheck",
    "on_build",
    "shell",
    "args_escaped",
)
HEALTHCHECK_KEY_FIELDS = (
    "test",
    "interval",
    "timeout",
    "start_period",
    "start_interval",
    "retries",
)

# Every dataclass that reaches a key, with the fields that count (by their name in the key).
KEY_FIELDS: Mapping[type, Mapping[str, str]] = {
    SourceStep: {name: name for name in SOURCE_KEY_FIELDS},
    RunStep: {name: name for name in RUN_KEY_FIELDS},
    CopyStep: {name: name for name in COPY_KEY_FIELDS},
    ConfigStep: {name: name for name in CONFIG_KEY_FIELDS},
    CopySource: COPY_SOURCE_KEY_FIELDS,
    RunMount: {name: name for name in RUN_MOUNT_KEY_FIELDS},
    RuntimeConfig: {name: name for name in RUNTIME_CONFIG_KEY_FIELDS},
    Healthcheck: {name: name for name in HEALTHCHECK_KEY_FIELDS},
}
# The fields that do not count, and why; with KEY_FIELDS they name every field (tested).
NOT_KEYED: Mapping[type, tuple[str, ...]] = {
    SourceStep: ("title", "where"),  # for messages only
    RunStep: ("context", "title", "where"),  # bind mounts from the context key their digest
    CopyStep: ("source", "title", "where"),  # `source` is keyed by COPY_SOURCE_KEY_FIELDS
    ConfigStep: ("title", "where"),
    CopySource: ("context",),  # its content digest counts, not where the checkout is
    RunMount: (),
    RuntimeConfig: (),
    Healthcheck: (),
}


def step_key(step: Step) -> str:
    match step:
        case SourceStep():
            return _digest("source", step)
        case RunStep():
            return _digest("run", step)
        case CopyStep():
            return _digest("copy", step, source=key_fields(step.source))
        case ConfigStep():
            return _digest("config", step)
    raise TypeError(f"not a step: {step!r}")


def key_fields(value: object) -> dict[str, object]:
    """The listed fields of a step (or of a dataclass inside one), by their name in the key,
    as JSON-able values."""
    names = KEY_FIELDS[type(value)]
    return {name: _plain(getattr(value, attribute)) for name, attribute in names.items()}


def _digest(kind: str, step: Step, **extra: object) -> str:
    doc = {"kind": f"buildgraph.{kind}.v{KEY_VERSION}", **key_fields(step), **extra}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return xxhash.xxh3_128_hexdigest(text.encode())


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value):
        # A dataclass without a field list would count every field unnamed: refuse it.
        return key_fields(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value
