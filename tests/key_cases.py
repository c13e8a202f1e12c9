"""Steps of every kind and a changed value for each of their key fields, nested ones included:
the cases of tests/graph/test_keys.py (the key changes) and test_explain.py (it is named)."""

from __future__ import annotations

from dataclasses import replace

from buildgraph.graph.keys import (
    CONFIG_KEY_FIELDS,
    COPY_KEY_FIELDS,
    COPY_SOURCE_KEY_FIELDS,
    HEALTHCHECK_KEY_FIELDS,
    RUN_KEY_FIELDS,
    RUN_MOUNT_KEY_FIELDS,
    RUNTIME_CONFIG_KEY_FIELDS,
    SOURCE_KEY_FIELDS,
)
from buildgraph.graph.steps import (
    ConfigStep,
    CopySource,
    CopyStep,
    RunMount,
    RunStep,
    SourceStep,
)
from buildgraph.image.config import Healthcheck, RuntimeConfig

RUN = RunStep("p" * 32, ("/bin/sh", "-c", "true"), (("A", "1"),), "root", "/", "host")
COPY = CopyStep("p" * 32, CopySource("", "/ctx", ("a",), "d" * 32), ("a",), "/a")
CONFIG = ConfigStep("p" * 32, "ENV A=1", RuntimeConfig(env=("A=1",)))
SOURCE = SourceStep("docker.io/library/busybox:latest", "sha256:" + "0" * 64, "linux/amd64")

CHANGED = {
    "parent": "q" * 32,
    "argv": ("/bin/sh", "-c", "false"),
    "env": (("A", "2"),),
    "user": "app",
    "workdir": "/srv",
    "network": "none",
    "files": (("/x", "y"),),
    "mounts": (RunMount("cache", "/var/cache", id="/var/cache"),),
    "unknown_owner_is_root": True,
    "security": "insecure",
    "patterns": ("b",),
    "dest": "/b",
    "inline": (("f", "x"),),
    "chown": "app",
    "chmod": "755",
    "add": True,
    "instruction": "ENV A=2",
    "config": RuntimeConfig(env=("A=2",)),
    "author": "me",
    "image": "docker.io/library/alpine:latest",
    "digest": "sha256:" + "1" * 64,
    "platform": "linux/arm64",
}
# -- nested fields: each listed one counts, changed inside the step that holds it ----------
MOUNT = RunMount("bind", "/w", source="src", digest="d" * 32)
HEALTH = Healthcheck(("CMD", "true"), interval=1)
RUN_WITH_MOUNT = replace(RUN, mounts=(MOUNT,))
CONFIG_WITH_HEALTH = replace(CONFIG, config=replace(CONFIG.config, healthcheck=HEALTH))

MOUNT_CHANGED = {
    "type": "cache",
    "target": "/v",
    "id": "other",
    "source": "src2",
    "digest": "e" * 32,
    "stage_key": "s" * 32,
    "readonly": True,
    "required": True,
    "mode": 0o700,
    "uid": 1,
    "gid": 1,
    "size": 4096,
    "env": "TOKEN",
}
RUNTIME_CONFIG_CHANGED = {
    "user": "app",
    "env": ("A=2",),
    "entrypoint": ("/bin/sh",),
    "cmd": ("true",),
    "working_dir": "/srv",
    "labels": (("a", "b"),),
    "exposed_ports": ("80/tcp",),
    "volumes": ("/data",),
    "stop_signal": "SIGINT",
    "healthcheck": Healthcheck(("NONE",)),
    "on_build": ("RUN true",),
    "shell": ("/bin/bash", "-c"),
    "args_escaped": True,
}
HEALTHCHECK_CHANGED = {
    "test": ("CMD", "false"),
    "interval": 2,
    "timeout": 3,
    "start_period": 4,
    "start_interval": 5,
    "retries": 6,
}
SOURCE_CHANGED = {"stage_key": "s" * 32, "paths": ("b",), "digest": "e" * 32}


def _in_mount(name: str) -> RunStep:
    return replace(RUN_WITH_MOUNT, mounts=(replace(MOUNT, **{name: MOUNT_CHANGED[name]}),))


def _in_config(name: str) -> ConfigStep:
    config = replace(CONFIG_WITH_HEALTH.config, **{name: RUNTIME_CONFIG_CHANGED[name]})
    return replace(CONFIG_WITH_HEALTH, config=config)


def _in_healthcheck(name: str) -> ConfigStep:
    health = replace(HEALTH, **{name: HEALTHCHECK_CHANGED[name]})
    return replace(
        CONFIG_WITH_HEALTH, config=replace(CONFIG_WITH_HEALTH.config, healthcheck=health)
    )


def _in_source(name: str) -> CopyStep:
    return replace(COPY, source=replace(COPY.source, **{name: SOURCE_CHANGED[name]}))


NESTED = [
    *((RUN_WITH_MOUNT, _in_mount, f"RunMount.{name}") for name in RUN_MOUNT_KEY_FIELDS),
    *((CONFIG_WITH_HEALTH, _in_config, f"RuntimeConfig.{n}") for n in RUNTIME_CONFIG_KEY_FIELDS),
    *((CONFIG_WITH_HEALTH, _in_healthcheck, f"Healthcheck.{n}") for n in HEALTHCHECK_KEY_FIELDS),
    *((COPY, _in_source, f"CopySource.{name}") for name in COPY_SOURCE_KEY_FIELDS.values()),
]

TOP_LEVEL = [
    *((RUN, name) for name in RUN_KEY_FIELDS),
    *((COPY, name) for name in COPY_KEY_FIELDS),
    *((CONFIG, name) for name in CONFIG_KEY_FIELDS),
    *((SOURCE, name) for name in SOURCE_KEY_FIELDS),
]
# (step, the step with one key field changed, "Kind.field"): every key field of every kind.
EVERY_FIELD = [
    *(
        (step, replace(step, **{name: CHANGED[name]}), f"{type(step).__name__}.{name}")
        for step, name in TOP_LEVEL
    ),
    *((step, change(field.split(".")[1]), field) for step, change, field in NESTED),
]
