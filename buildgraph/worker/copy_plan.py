"""COPY/ADD rules that need no filesystem: the job, flag parsing, owners, paths, patterns.

Semantics follow BuildKit (dockerfile2llb `dispatchCopy`, llbsolver/file `docopy`/`readUser`,
tonistiigi/fsutil `copy.Copy`); where they differ from the classic builder, the comment says so.
"""

from __future__ import annotations

import fnmatch
import posixpath
from dataclasses import dataclass

from buildgraph.errors import InputError, StepFailed
from buildgraph.frontend.flags import parse_chmod

GLOB_CHARS = frozenset("*?[")
MULTI_SOURCE_ERROR = (
    "When using COPY with more than one source file, the destination must be a directory "
    "and end with a /"
)


@dataclass(frozen=True, slots=True)
class CopyJob:
    sources: tuple[str, ...]  # context: paths from select_sources; stage: patterns as written
    dest: str  # absolute path in the image; keeps a trailing "/" if the Dockerfile had one
    inline: tuple[tuple[str, str], ...] = ()  # heredoc files `COPY <<EOF /dst`: (name, content)
    chown: str = ""  # "", "user", "uid", "user:group", "uid:gid": looked up in the dest image
    chmod: str = ""  # octal as written ("755", "0644"); "" keeps the source modes
    add: bool = False  # ADD: a context file that is a (compressed) tar is extracted into dest
    patterns_from_stage: bool = False  # sources are patterns to expand in the source view
    unknown_owner_is_root: bool = False  # WORKDIR: a --chown name /etc/passwd lacks is root


def applied_mode(source_mode: int, chmod: int | None) -> int:
    """Permission bits for a copied entry. fsutil replaces only the 0777 bits; a four-digit
    --chmod (BuildKit accepts up to 07777) sets the special bits too."""
    if chmod is None:
        return source_mode & 0o7777
    if chmod > 0o777:
        return chmod
    return (source_mode & 0o7000) | chmod


def check_job(job: CopyJob) -> int | None:
    """Checks that need no filesystem; returns the parsed --chmod."""
    if not job.dest.startswith("/"):
        raise StepFailed(f"COPY destination {job.dest!r} is not absolute")
    if not job.sources and not job.inline and not job.dest.endswith("/"):
        # A job without sources whose dest ends in "/" only makes that dir (WORKDIR does).
        raise InputError("COPY has no source")
    for name, _ in job.inline:
        if not clean_parts(name):
            raise InputError(f"invalid inline file name {name!r}")
    return parse_chmod(job.chmod)


def check_source_count(count: int, dest: str, dest_is_dir: bool) -> None:
    """Several sources (glob matches counted) need a directory to land in: a dest that ends in
    "/" or already is one. BuildKit copies them one after another onto the same path, so only
    the last survives; we keep the documented rule and the classic builder's error instead."""
    if count > 1 and not dest.endswith("/") and not dest_is_dir:
        raise InputError(MULTI_SOURCE_ERROR)


def clean_parts(path: str) -> list[str]:
    """Components of `path` below a root, like Go's filepath.Join("/", path): ".." stops there."""
    cleaned = posixpath.normpath("/" + path.replace("\\", "/"))
    return [part for part in cleaned.split("/") if part]


def split_pattern(pattern: str) -> tuple[list[str], list[str]]:
    """fsutil's splitWildcards: the literal leading components, then the rest of the pattern."""
    parts = clean_parts(pattern)
    for index, part in enumerate(parts):
        if GLOB_CHARS & set(part):
            return parts[:index], parts[index:]
    return parts, []


def name_matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)  # one component, as in Go's filepath.Match


def resolve_owner(
    chown: str, passwd: list[list[str]], groups: list[list[str]], *, unknown_is_root: bool = False
) -> tuple[int, int] | None:
    """uid/gid for --chown from the destination image's passwd and group rows, or None.

    Like BuildKit's readUser: a name takes its primary group from passwd; a bare numeric
    uid also becomes the gid (no passwd lookup). BuildKit silently maps unknown names to 0;
    we refuse them, like the classic builder, unless `unknown_is_root` (WORKDIR's mkdir, which
    the classic builder never chowned)."""
    if not chown:
        return None
    user, _, group = chown.partition(":")
    if not user:
        raise InputError(f"invalid --chown {chown!r}: no user")
    if user.isdigit():
        uid = gid = _id(user, "uid", chown)
    else:
        entry = next((row for row in passwd if row[0] == user), None)
        if entry is None and unknown_is_root:
            entry = [user, "", "0", "0"]
        if entry is None:
            raise StepFailed(f"unable to find user {user}: no matching entries in passwd file")
        uid, gid = _id(entry[2], "uid", user), _id(entry[3], "gid", user)
    if group:
        if group.isdigit():
            gid = _id(group, "gid", chown)
        else:
            found = next((row for row in groups if row[0] == group), None)
            if found is None and unknown_is_root:
                found = [group, "", str(gid)]
            if found is None:
                raise StepFailed(f"unable to find group {group}: no matching entries in group file")
            gid = _id(found[2], "gid", group)
    return uid, gid


def _id(text: str, what: str, name: str) -> int:
    if not text.isdigit() or int(text) >= 2**32 - 1:
        raise StepFailed(f"invalid {what} {text!r} for {name}")
    return int(text)
