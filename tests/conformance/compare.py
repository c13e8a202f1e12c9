"""Pure helpers that turn an unpacked image into comparable data and describe differences."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any

# One rootfs entry: (type, mode, uid, gid, content, link target, hardlink group).
# content is the sha256 of a regular file and "major:minor" of a device; the hardlink group is
# the smallest path of the paths in the tree that share this inode, "" for a lone inode.
ENTRY_FIELDS = ("type", "mode", "uid", "gid", "content", "link", "hardlink")
Entry = tuple[str, int, int, int, str, str, str]

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# The config fields the acceptance compares, with the value Docker treats as "not set".
CONFIG_DEFAULTS: dict[str, Any] = {
    "Env": [],
    "Cmd": None,
    "Entrypoint": None,
    "WorkingDir": "",
    "User": "",
    "Labels": {},
    "ExposedPorts": [],
    "Volumes": [],
    "StopSignal": "",
    "Healthcheck": None,
    "OnBuild": [],
    "Shell": [],
}
HEALTHCHECK_DURATIONS = ("Interval", "Timeout", "StartPeriod", "StartInterval")
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_NANOSECONDS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9}
_NANOSECONDS["h"] = 3600 * 10**9


def rootfs_tree(root: Path) -> dict[str, Entry]:
    """Every path under root ("/" itself included) with what the acceptance compares.

    Nothing is skipped here: mtimes, atimes and ctimes are simply not recorded. Artifacts that
    one tool adds on its own are removed by that tool's adapter (see peer.py), not here.
    """
    stats: dict[str, os.stat_result] = {"/": os.lstat(root)}
    for directory, dirnames, filenames in os.walk(root):
        relative = "/" + os.path.relpath(directory, root).removeprefix(".").lstrip("/")
        for name in dirnames + filenames:  # os.walk lists symlinks to dirs under dirnames
            path = relative.rstrip("/") + "/" + name
            stats[path] = os.lstat(os.path.join(directory, name))
    inodes: dict[tuple[int, int], list[str]] = {}
    for path, info in stats.items():
        if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
            inodes.setdefault((info.st_dev, info.st_ino), []).append(path)
    group_of = {p: min(paths) for paths in inodes.values() if len(paths) > 1 for p in paths}
    return {
        path: _entry(root, path, info, group_of.get(path, ""))
        for path, info in sorted(stats.items())
    }


def _entry(root: Path, path: str, info: os.stat_result, group: str) -> Entry:
    full = os.path.join(root, path.lstrip("/"))
    mode = info.st_mode
    content = link = ""
    if stat.S_ISREG(mode):
        kind = "file"
        content = _sha256(full)
    elif stat.S_ISDIR(mode):
        kind = "dir"
    elif stat.S_ISLNK(mode):
        kind = "symlink"
        link = os.readlink(full)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "char" if stat.S_ISCHR(mode) else "block"
        content = f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}"
    elif stat.S_ISFIFO(mode):
        kind = "fifo"
    else:
        kind = "socket"
    return (kind, stat.S_IMODE(mode), info.st_uid, info.st_gid, content, link, group)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_fields(config_json: dict[str, Any]) -> dict[str, Any]:
    """The compared fields of an image config document (or of its inner "config" object).

    Missing, null and empty are made equal where Docker treats them equal; ExposedPorts and
    Volumes become sorted key lists; Healthcheck durations become integer nanoseconds.
    """
    config = config_json.get("config", config_json) or {}
    fields = {}
    for name, default in CONFIG_DEFAULTS.items():
        value = config.get(name)
        if name in ("ExposedPorts", "Volumes"):
            value = sorted(value or {})
        elif name == "Healthcheck":
            value = _healthcheck(value)
        fields[name] = value if value else default  # None, [], {}, "" all mean "not set"
    return fields


def _healthcheck(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if not value:
        return None
    check = {"Test": list(value.get("Test") or []), "Retries": int(value.get("Retries") or 0)}
    for name in HEALTHCHECK_DURATIONS:
        check[name] = _nanoseconds(value.get(name) or 0)
    return check


def _nanoseconds(value: int | str) -> int:
    if isinstance(value, int):
        return value
    parts = _GO_DURATION.findall(value)
    if not parts or "".join(a + b for a, b in parts) != value:
        raise ValueError(f"not a duration: {value!r}")
    return sum(int(float(number) * _NANOSECONDS[unit]) for number, unit in parts)


def diff_trees(
    a: dict[str, Entry], b: dict[str, Entry], names: tuple[str, str] = ("a", "b")
) -> list[str]:
    """Readable differences between two rootfs_tree results, one line each, sorted by path."""
    lines = []
    for path in sorted(a.keys() | b.keys()):
        if path not in b:
            lines.append(f"{path}: only in {names[0]} {describe(a[path])}")
        elif path not in a:
            lines.append(f"{path}: only in {names[1]} {describe(b[path])}")
        elif a[path] != b[path]:
            changed = [
                f"{field} {_show(field, x)} != {_show(field, y)}"
                for field, x, y in zip(ENTRY_FIELDS, a[path], b[path], strict=True)
                if x != y
            ]
            lines.append(f"{path}: " + ", ".join(changed) + f" ({names[0]} != {names[1]})")
    return lines


def diff_configs(
    a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = ("a", "b")
) -> list[str]:
    """Readable differences between two config_fields results."""
    return [
        f"{field}: {a.get(field)!r} ({names[0]}) != {b.get(field)!r} ({names[1]})"
        for field in sorted(a.keys() | b.keys())
        if a.get(field) != b.get(field)
    ]


def describe(entry: Entry) -> str:
    return " ".join(
        f"{field}={_show(field, value)}"
        for field, value in zip(ENTRY_FIELDS, entry, strict=True)
        if value != ""
    )


def _show(field: str, value: object) -> str:
    if field == "mode" and isinstance(value, int):
        return f"{value:04o}"
    if field == "content" and isinstance(value, str) and len(value) == 64:
        return value[:12]  # a sha256: the start is enough to tell two apart
    return repr(value) if field in ("link", "hardlink") else str(value)  # paths may hold spaces


def check_expectations(
    tree: dict[str, Entry], config: dict[str, Any], expect: dict[str, Any]
) -> list[str]:
    """Where tree/config break a case's pinned "expect" block (see README.md); [] if nowhere."""
    problems = []
    for path, want in expect.get("paths", {}).items():
        entry = tree.get(path)
        if want.get("absent"):
            if entry is not None:
                problems.append(f"{path}: should be absent, is {describe(entry)}")
            continue
        if entry is None:
            problems.append(f"{path}: missing")
            continue
        got = dict(zip(ENTRY_FIELDS, entry, strict=True))
        for key, value in want.items():
            if key == "text":
                key, value = "content", hashlib.sha256(value.encode()).hexdigest()
            elif key == "mode":
                value = int(value, 8)
            if got[key] != value:
                problems.append(f"{path}: {key} {_show(key, got[key])} != {_show(key, value)}")
    for field, value in expect.get("config", {}).items():
        if config.get(field) != value:
            problems.append(f"config {field}: {config.get(field)!r} != {value!r}")
    return problems


def case_differences(
    ours: tuple[dict[str, Entry], dict[str, Any]],
    peer: tuple[dict[str, Entry], dict[str, Any]],
    *,
    peer_differs: dict[str, str],
    expect: dict[str, Any],
) -> list[str]:
    """Everything that keeps (tree, config_fields) `ours` from conforming to `peer`.

    Paths and config fields named in peer_differs (where buildah breaks Docker's documented
    behaviour) are not compared with the peer; the case's pinned expectations, which hold what
    Docker does there, are checked on `ours` instead.
    """
    paths = tuple(key for key in peer_differs if key.startswith("/"))

    def compared(tree: dict[str, Entry]) -> dict[str, Entry]:
        return {p: e for p, e in tree.items() if not any(_under(p, skip) for skip in paths)}

    fields = {key: value for key, value in ours[1].items() if key not in peer_differs}
    peer_fields = {key: value for key, value in peer[1].items() if key not in peer_differs}
    names = ("ours", "peer")
    return (
        diff_trees(compared(ours[0]), compared(peer[0]), names)
        + diff_configs(fields, peer_fields, names)
        + check_expectations(ours[0], ours[1], expect)
    )


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")
