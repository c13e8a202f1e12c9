"""What a step changed in a materialized root (the chroot isolation), found as Kaniko's
snapshotter finds it: a metadata walk of the tree against its previous manifest, turned into
the upper dir overlayfs would have left.

A change is a path whose type, mode, owner, size, mtime, inode or link target differs; a file
rewritten in place with the same size and mtime (`touch -d`) is not seen, as in Kaniko's
default mode. Extended attributes changed alone are not seen either.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Entry:
    mode: int  # st_mode: type and permission bits
    uid: int
    gid: int
    size: int
    mtime_ns: int
    inode: int
    link: str  # symlink target, else ""
    # Not part of what a step changed (the keeper's own renames touch ctime), but what tells
    # a root put back to its pristine copy (worker/revert.py) that an entry was touched at
    # all: no unprivileged process can set ctime back.
    ctime_ns: int = field(default=0, compare=False)
    links: int = field(default=1, compare=False)  # st_nlink


Manifest = dict[str, Entry]  # "etc/passwd" -> its entry; the root itself is not in it


def scan(tree: Path, previous: Manifest | None = None) -> Manifest:
    """Every path below `tree`, never following a symlink. A symlink whose inode and ctime
    are those `previous` has for its path keeps the target recorded there: no readlink (a
    busybox root is mostly symlinks, and any change to one moves its ctime)."""
    found: Manifest = {}
    before = previous or {}
    pending = [("", str(tree))]
    while pending:
        prefix, directory = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                relative = prefix + entry.name
                link = ""
                if stat.S_ISLNK(info.st_mode):
                    old = before.get(relative)
                    same = old is not None and old.inode == info.st_ino
                    if same and old.ctime_ns == info.st_ctime_ns and old.link:
                        link = old.link
                    else:
                        link = os.readlink(entry.path)
                found[relative] = Entry(
                    info.st_mode,
                    info.st_uid,
                    info.st_gid,
                    info.st_size,
                    info.st_mtime_ns,
                    info.st_ino,
                    link,
                    info.st_ctime_ns,
                    info.st_nlink,
                )
                if stat.S_ISDIR(info.st_mode):
                    pending.append((relative + "/", entry.path))
    return found


def changes(before: Manifest, after: Manifest) -> tuple[list[str], list[str]]:
    """(paths to write, paths to white out), parents before children. A deleted path under a
    deleted dir, or under a dir that became something else, needs no whiteout of its own."""
    changed = {path for path, entry in after.items() if before.get(path) != entry}
    # A new name for a file links it to names the step did not touch: the layer carries the
    # whole link group, as overlayfs copies the file up and the worker relinks the names.
    names_of: dict[int, list[str]] = {}
    for path, entry in after.items():
        if not stat.S_ISDIR(entry.mode):
            names_of.setdefault(entry.inode, []).append(path)
    for path in list(changed):
        entry = after[path]
        if not stat.S_ISDIR(entry.mode):
            changed.update(names_of.get(entry.inode, ()))
    written = sorted(changed)
    deleted = []
    for path in sorted(before.keys() - after.keys()):
        parent = path.rpartition("/")[0]
        if not parent or (
            parent in after
            and stat.S_ISDIR(after[parent].mode)
            and stat.S_ISDIR(before[parent].mode)
        ):
            deleted.append(path)
    return written, deleted


def write_upper(
    tree: Path, upper: Path, after: Manifest, written: list[str], deleted: list[str]
) -> frozenset[str]:
    """An overlay-style diff of `tree` in `upper` (same filesystem): changed entries as hard
    links to the tree's own inodes (no copy; `upper` is read once, by write_layer, and
    removed), changed dirs and the parents of anything below them with the tree's metadata.
    What overlayfs leaves in a RUN's upper dir, but for deletions: an unprivileged container
    may not mknod the 0/0 device overlayfs uses, so each is an empty file, and the names are
    returned for write_layer's `whiteout_names`."""
    made_dirs: list[str] = []

    def ensure_dir(relative: str) -> None:
        if not relative or (upper / relative).is_dir():
            return
        ensure_dir(relative.rpartition("/")[0])
        (upper / relative).mkdir()
        made_dirs.append(relative)

    for relative in written:
        entry = after[relative]
        ensure_dir(relative.rpartition("/")[0])
        if stat.S_ISDIR(entry.mode):
            ensure_dir(relative)
        else:
            os.link(tree / relative, upper / relative, follow_symlinks=False)
    for relative in deleted:
        ensure_dir(relative.rpartition("/")[0])
        os.close(os.open(upper / relative, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for relative in reversed(made_dirs):  # children first: setting times last keeps them
        entry = after[relative]
        path = upper / relative
        os.chown(path, entry.uid, entry.gid, follow_symlinks=False)
        os.chmod(path, stat.S_IMODE(entry.mode))
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
    return frozenset(deleted)
