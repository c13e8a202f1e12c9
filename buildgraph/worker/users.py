"""USER lookups in the root's /etc/passwd and /etc/group, as runc's user package does."""

from __future__ import annotations

from buildgraph.worker.kernel import SetupError


def resolve_user(user: str) -> tuple[int, int, list[int]]:
    """uid, gid and supplementary groups of `user` from the root's /etc/passwd and /etc/group."""
    name, _, group = user.partition(":")
    passwd = read_db("/etc/passwd")
    if not name or name.isdigit():
        uid = int(name or 0)
        entry = next((e for e in passwd if e[2] == str(uid)), None)
    else:
        entry = next((e for e in passwd if e[0] == name), None)
        if entry is None:
            raise SetupError(f"unable to find user {name}: no matching entries in passwd file")
        uid = _number(entry[2], "uid", name)
    gid = _number(entry[3], "gid", name) if entry else 0
    login = entry[0] if entry else None
    groups_db = read_db("/etc/group")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = next((e for e in groups_db if e[0] == group), None)
            if found is None:
                raise SetupError(f"unable to find group {group}: no matching entries in group file")
            gid = _number(found[2], "gid", group)
        return uid, gid, [gid]
    extra = [int(e[2]) for e in groups_db if login and login in e[3].split(",") and e[2].isdigit()]
    return uid, gid, list(dict.fromkeys([gid, *extra]))


def home_of(uid: int) -> str:
    entry = next((e for e in read_db("/etc/passwd") if len(e) > 5 and e[2] == str(uid)), None)
    return entry[5] if entry and entry[5] else "/"


def read_db(path: str) -> list[list[str]]:
    """The rows of a passwd/group style file (at least 4 fields each); [] if unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    rows = [line.split(":") for line in lines if line and not line.startswith("#")]
    return [(row + [""] * 4)[: max(4, len(row))] for row in rows if len(row) >= 3]


def _number(text: str, what: str, name: str) -> int:
    if not text.isdigit() or int(text) >= 2**32 - 1:
        raise SetupError(f"invalid {what} {text!r} for {name}")
    return int(text)
