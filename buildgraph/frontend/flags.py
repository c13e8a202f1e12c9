"""Instruction flags (`--name=value`): splitting them off, checking them, and their value types."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from buildgraph.errors import InputError, Location, shorten
from buildgraph.frontend.instructions import Mount

BOOL, STRING, STRINGS = "bool", "string", "strings"

# The flags each instruction accepts (docker/buildkit as of Dockerfile syntax 1.7).
FLAGS: dict[str, dict[str, str]] = {
    "FROM": {"platform": STRING},
    "RUN": {"mount": STRINGS, "network": STRING, "security": STRING},
    "COPY": {
        "from": STRING, "chown": STRING, "chmod": STRING, "link": BOOL, "parents": BOOL,
        "exclude": STRINGS,
    },
    "ADD": {
        "chown": STRING, "chmod": STRING, "link": BOOL, "checksum": STRING,
        "keep-git-dir": BOOL, "exclude": STRINGS,
    },
    "HEALTHCHECK": {
        "interval": STRING, "timeout": STRING, "start-period": STRING, "start-interval": STRING,
        "retries": STRING,
    },
}  # fmt: skip


def split_flags(text: str) -> tuple[list[str], str]:
    """Leading `--flag[=value]` words and the rest (buildkit extractBuilderFlags)."""
    flags: list[str] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if not text.startswith("--", pos):
            return flags, text[pos:]
        word: list[str] = []
        quote = ""
        blank_ok = False
        while pos < len(text):
            ch = text[pos]
            if quote:
                if ch == quote:
                    quote = ""
                    pos += 1
                    continue
            elif ch.isspace():
                break
            elif ch in "'\"":
                quote, blank_ok = ch, True
                pos += 1
                continue
            if ch == "\\":  # flags always use backslash, whatever the escape directive says
                pos += 1
                if pos == len(text):
                    break
                ch = text[pos]
            word.append(ch)
            pos += 1
        flag = "".join(word)
        if flag == "--":
            return flags, text[pos:].lstrip()
        if blank_ok or flag:
            flags.append(flag)


@dataclass(frozen=True, slots=True)
class FlagValues:
    values: dict[str, str | bool | list[str]]

    def string(self, name: str) -> str | None:
        value = self.values.get(name)
        return value if isinstance(value, str) else None

    def boolean(self, name: str) -> bool:
        return self.values.get(name) is True

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.values.get(name)
        return tuple(value) if isinstance(value, list) else ()


def parse_flags(keyword: str, flags: list[str], where: Location) -> FlagValues:
    """Check `flags` against what `keyword` accepts (buildkit BFlags.Parse)."""
    known = FLAGS.get(keyword, {})
    values: dict[str, str | bool | list[str]] = {}
    for flag in flags:
        name, has_value, value = flag.removeprefix("--").partition("=")
        kind = known.get(name)
        if kind is None:
            raise InputError(f"unknown flag for {keyword}: --{name}", where)
        if name in values and kind != STRINGS:
            raise InputError(f"duplicate flag for {keyword}: --{name}", where)
        if kind == BOOL:
            if has_value and value.lower() not in ("true", "false"):
                raise InputError(f"expecting a boolean for --{name}, not {value!r}", where)
            values[name] = not has_value or value.lower() == "true"
        elif not has_value:
            raise InputError(f"missing a value on flag --{name}", where)
        elif kind == STRINGS:
            values.setdefault(name, [])
            values[name].append(value)  # type: ignore[union-attr]
        else:
            values[name] = value
    return FlagValues(values)


_DURATION_UNITS = {
    "ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
    "m": 60_000_000_000, "h": 3_600_000_000_000,
}  # fmt: skip
_MAX_NANOSECONDS = 2**63 - 1
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str, flag: str, where: Location) -> int:
    """Go's time.ParseDuration ("1m30s", "1.5h", "300ms") in nanoseconds, at least 1ms."""
    if not text:
        return 0
    body = text.lstrip("+")
    pos, total = 0, 0.0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if not match:
            raise InputError(f"invalid duration for --{flag}: {shorten(text)!r}", where)
        total += float(match[1]) * _DURATION_UNITS[match[2]]
        pos = match.end()
    if not total <= _MAX_NANOSECONDS:  # Go's Duration is an int64 (and float('9' * 5000) is inf)
        raise InputError(f"invalid duration for --{flag}: {shorten(text)!r} is too long", where)
    if total < 1_000_000:
        raise InputError(f"--{flag} cannot be less than 1ms", where)
    return round(total)


_SIZE = re.compile(r"(?i)^(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?$")


def parse_size(text: str, where: Location) -> int:
    """Docker's RAMInBytes: "64m" -> 64 MiB."""
    match = _SIZE.match(text.strip())
    size = float(match[1]) * 1024 ** "_kmgtp".index(match[2].lower() or "_") if match else -1
    if not 0 <= size < 2**63:  # also inf, from a 5000-digit number
        raise InputError(f"invalid size {shorten(text)!r}", where)
    return int(size)


_MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_MOUNT_KEYS = {
    "type": "type", "target": "target", "dst": "target", "destination": "target",
    "source": "source", "src": "source", "from": "from_", "id": "id", "sharing": "sharing",
    "mode": "mode", "uid": "uid", "gid": "gid", "required": "required", "readonly": "readonly",
    "ro": "readonly", "readwrite": "readwrite", "rw": "readwrite", "size": "size", "env": "env",
}  # fmt: skip


def parse_mount(text: str, where: Location, expand: Callable[[str], str] | None = None) -> Mount:
    """One `--mount=` value: comma-separated key=value fields (buildkit parseMount).

    Each value is expanded with `expand` (the ARGs and ENVs visible at the RUN) before it is
    read, so `type=$T` is lower-cased after expansion. Without `expand` (parsing, before any
    scope is known) a mount whose values hold a `$` is kept as written, to be read again once
    expanded; `from` never expands, as in BuildKit."""
    fields: dict[str, str] = {}
    for item in _split_csv(text):
        key, has_value, value = item.partition("=")
        name = _MOUNT_KEYS.get(key.strip().lower())
        if name is None:
            raise InputError(f"unexpected key {key!r} in --mount={text}", where)
        if not has_value and name not in ("readonly", "readwrite", "required"):
            raise InputError(f"--mount field {key!r} needs a value", where)
        fields[name] = value if has_value else "true"
    if "$" in fields.get("from_", "")[:-1]:  # buildkit: a trailing "$" is a plain character
        raise InputError(
            "'from' doesn't support variable expansion, define alias stage instead", where
        )
    if expand is not None:
        fields = {name: expand(value) for name, value in fields.items()}
    elif any("$" in value for value in fields.values()):
        return Mount(  # read for real by expand_instruction, which has the variables
            type=fields.get("type", "bind"),
            target=fields.get("target", ""),
            source=fields.get("source", ""),
            from_=fields.get("from_", ""),
            id=fields.get("id", ""),
            spec=text,
        )
    return _mount_of(fields, text, where)


def _mount_of(fields: dict[str, str], text: str, where: Location) -> Mount:
    """The mount the (expanded) fields of `--mount=text` describe, with Docker's defaults."""
    written = fields.pop("type", "bind")
    kind = written.lower()
    if kind not in _MOUNT_TYPES:
        raise InputError(f"unsupported mount type {written!r}", where)
    readonly = kind == "bind"  # bind mounts are read-only unless rw is asked for
    if "readonly" in fields:
        readonly = _mount_bool(fields.pop("readonly"), where)
    if "readwrite" in fields:
        readonly = not _mount_bool(fields.pop("readwrite"), where)
    sharing = fields.pop("sharing", "shared").lower()
    if sharing not in ("shared", "private", "locked"):
        raise InputError(f"unsupported sharing value {sharing!r}", where)
    target, identifier = _mount_target_and_id(kind, fields, where)
    return Mount(
        type=kind,
        target=target,
        source=fields.pop("source", ""),
        from_=fields.pop("from_", ""),
        id=identifier,
        sharing=sharing,
        mode=_mount_int(fields.pop("mode", None), 8, where),
        uid=_mount_int(fields.pop("uid", None), 10, where),
        gid=_mount_int(fields.pop("gid", None), 10, where),
        required=_mount_bool(fields.pop("required", "false"), where),
        readonly=readonly,
        size=parse_size(fields.pop("size"), where) if "size" in fields else None,
        env=fields.pop("env", ""),
        spec=text,
    )


def _mount_target_and_id(kind: str, fields: dict[str, str], where: Location) -> tuple[str, str]:
    """Where the mount appears and its id, defaulted per type as BuildKit does."""
    target = fields.pop("target", "")
    identifier = fields.pop("id", "")
    if kind == "secret":
        if fields.get("from_"):
            raise InputError("secret mount should not have a from", where)
        if not identifier and not target:
            raise InputError("secret mount needs an id or a target", where)
        identifier = identifier or target.rstrip("/").rsplit("/", 1)[-1]
        if not fields.get("env"):  # BuildKit: with env= and no target, no file at all
            target = target or f"/run/secrets/{identifier}"
    elif kind == "ssh":
        identifier = identifier or "default"
    elif not target:
        raise InputError(f"{kind} mount needs a target", where)
    if kind == "cache":
        identifier = identifier or target
    return target, identifier


def _split_csv(text: str) -> list[str]:
    """Comma-separated fields; a field may be double-quoted to hold commas."""
    items, current, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return [item for item in items if item.strip()]


def _mount_bool(value: str, where: Location) -> bool:
    if value.lower() not in ("true", "false", "1", "0"):
        raise InputError(f"invalid boolean {value!r} in --mount", where)
    return value.lower() in ("true", "1")


def _mount_int(value: str | None, base: int, where: Location) -> int | None:
    if value is None:
        return None
    try:
        return int(value, base)
    except ValueError:
        raise InputError(f"invalid number {value!r} in --mount", where) from None


def parse_chmod(text: str) -> int | None:
    """The --chmod mode, or None to keep modes. BuildKit's check and message."""
    if not text:
        return None
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o7777:
        raise InputError(
            f"invalid chmod parameter: '{shorten(text)}'. "
            "it should be octal string and between 0 and 07777"
        )
    return mode
