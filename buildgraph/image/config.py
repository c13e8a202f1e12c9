"""The OCI/Docker image configuration: runtime config, rootfs diff_ids and history."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from buildgraph.errors import InputError
from buildgraph.image.oci import Platform, canonical_json


@dataclass(frozen=True, slots=True)
class Healthcheck:
    test: tuple[str, ...]  # ("NONE",) | ("CMD", ...) | ("CMD-SHELL", cmd)
    interval: int = 0  # nanoseconds, as docker stores them
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"Test": list(self.test)}
        for key, value in (
            ("Interval", self.interval),
            ("Timeout", self.timeout),
            ("StartPeriod", self.start_period),
            ("StartInterval", self.start_interval),
            ("Retries", self.retries),
        ):
            if value:
                doc[key] = value
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Healthcheck:
        return cls(
            test=tuple(doc.get("Test") or ()),
            interval=int(doc.get("Interval") or 0),
            timeout=int(doc.get("Timeout") or 0),
            start_period=int(doc.get("StartPeriod") or 0),
            start_interval=int(doc.get("StartInterval") or 0),
            retries=int(doc.get("Retries") or 0),
        )


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """The `config` object: what a container of this image starts with."""

    user: str = ""
    env: tuple[str, ...] = ()  # "KEY=value", in order
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # sorted
    exposed_ports: tuple[str, ...] = ()  # "80/tcp", sorted
    volumes: tuple[str, ...] = ()  # sorted
    stop_signal: str = ""
    healthcheck: Healthcheck | None = None
    on_build: tuple[str, ...] = ()
    shell: tuple[str, ...] = ()
    args_escaped: bool = False

    def env_dict(self) -> dict[str, str]:
        pairs = (item.partition("=") for item in self.env)
        return {key: value for key, _, value in pairs}

    def with_env(self, key: str, value: str) -> RuntimeConfig:
        """Set `key`; an existing variable keeps its place (as Docker does), a new one is added."""
        entry = f"{key}={value}"
        if any(item.partition("=")[0] == key for item in self.env):
            env = tuple(entry if item.partition("=")[0] == key else item for item in self.env)
            return replace(self, env=env)
        return replace(self, env=(*self.env, entry))

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.user:
            doc["User"] = self.user
        if self.exposed_ports:
            doc["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        if self.env:
            doc["Env"] = list(self.env)
        if self.entrypoint is not None:
            doc["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            doc["Cmd"] = list(self.cmd)
        if self.volumes:
            doc["Volumes"] = {volume: {} for volume in self.volumes}
        if self.working_dir:
            doc["WorkingDir"] = self.working_dir
        if self.labels:
            doc["Labels"] = dict(self.labels)
        if self.stop_signal:
            doc["StopSignal"] = self.stop_signal
        if self.healthcheck:
            doc["Healthcheck"] = self.healthcheck.to_dict()
        if self.on_build:
            doc["OnBuild"] = list(self.on_build)
        if self.shell:
            doc["Shell"] = list(self.shell)
        if self.args_escaped:
            doc["ArgsEscaped"] = True
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any] | None) -> RuntimeConfig:
        doc = doc or {}
        entrypoint, cmd = doc.get("Entrypoint"), doc.get("Cmd")
        return cls(
            user=doc.get("User") or "",
            env=tuple(doc.get("Env") or ()),
            entrypoint=tuple(entrypoint) if entrypoint is not None else None,
            cmd=tuple(cmd) if cmd is not None else None,
            working_dir=doc.get("WorkingDir") or "",
            labels=tuple(sorted((doc.get("Labels") or {}).items())),
            exposed_ports=tuple(sorted(doc.get("ExposedPorts") or {})),
            volumes=tuple(sorted(doc.get("Volumes") or {})),
            stop_signal=doc.get("StopSignal") or "",
            healthcheck=Healthcheck.from_dict(doc["Healthcheck"])
            if doc.get("Healthcheck")
            else None,
            on_build=tuple(doc.get("OnBuild") or ()),
            shell=tuple(doc.get("Shell") or ()),
            args_escaped=bool(doc.get("ArgsEscaped")),
        )


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    created: str = ""
    created_by: str = ""
    author: str = ""
    comment: str = ""
    empty_layer: bool = False

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for key, value in (
            ("created", self.created),
            ("created_by", self.created_by),
            ("author", self.author),
            ("comment", self.comment),
        ):
            if value:
                doc[key] = value
        if self.empty_layer:
            doc["empty_layer"] = True
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> HistoryEntry:
        return cls(
            created=doc.get("created") or "",
            created_by=doc.get("created_by") or "",
            author=doc.get("author") or "",
            comment=doc.get("comment") or "",
            empty_layer=bool(doc.get("empty_layer")),
        )


@dataclass(frozen=True, slots=True)
class ImageConfig:
    platform: Platform = field(default_factory=Platform)
    config: RuntimeConfig = field(default_factory=RuntimeConfig)
    diff_ids: tuple[str, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    created: str = ""
    author: str = ""
    os_version: str = ""

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "architecture": self.platform.architecture,
            "os": self.platform.os,
            "config": self.config.to_dict(),
            "rootfs": {"type": "layers", "diff_ids": list(self.diff_ids)},
            "history": [entry.to_dict() for entry in self.history],
        }
        if self.platform.variant:
            doc["variant"] = self.platform.variant
        if self.created:
            doc["created"] = self.created
        if self.author:
            doc["author"] = self.author
        if self.os_version:
            doc["os.version"] = self.os_version
        return canonical_json(doc)

    @classmethod
    def from_json(cls, data: bytes) -> ImageConfig:
        try:
            doc = json.loads(data)
            rootfs = doc.get("rootfs") or {}
            return cls(
                platform=Platform(
                    doc.get("os", ""), doc.get("architecture", ""), doc.get("variant", "") or ""
                ),
                config=RuntimeConfig.from_dict(doc.get("config")),
                diff_ids=tuple(rootfs.get("diff_ids") or ()),
                history=tuple(HistoryEntry.from_dict(h) for h in doc.get("history") or ()),
                created=doc.get("created") or "",
                author=doc.get("author") or "",
                os_version=doc.get("os.version") or "",
            )
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as err:
            raise InputError(f"invalid image config: {err}") from err

    def with_layer(self, diff_id: str, entry: HistoryEntry) -> ImageConfig:
        return replace(self, diff_ids=(*self.diff_ids, diff_id), history=(*self.history, entry))

    def with_history(self, entry: HistoryEntry) -> ImageConfig:
        return replace(self, history=(*self.history, entry))
