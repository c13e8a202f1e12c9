"""Put a used root of the chroot isolation back to the pristine copy of its template it was
made as, so that the next step that needs that template's tree takes it instead of a new copy.

A copy creates every entry of the tree (a busybox root: ~290, most of them symlinks), and on a
disk busy with a build's RUNs and commits that cost 0.1-0.5 s a copy; what a finished service's
steps added to it (its sources, objects, binary) is a few dozen entries to remove. The revert
trusts nothing the steps did: an entry whose inode or ctime differs from the pristine copy's
was touched, and is replaced by the template's; no unprivileged process can set a ctime back
(that needs CAP_SYS_TIME). Then the whole tree is compared with the template's manifest, and
a tree that differs anywhere is not reused.

As everywhere the chroot isolation handles a root between steps, the tree is quiescent (the
keeper killed what its RUN left running), and paths are only followed through entries the scan
saw as directories: a symlink a step planted is removed, never followed.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from buildgraph.worker.treediff import Entry, Manifest, scan

ARGS_PER_CP = 512  # paths restored by one `cp` process


def revert(tree: Path, pristine: Manifest, template: Path, wanted: Manifest) -> Manifest | None:
    """Make `tree` again what it was when `pristine` was scanned (a `cp -a` of `template`,
    whose manifest is `wanted`). Returns the tree's new manifest, or None when it could not
    be made equal to the template (the caller then throws the tree away)."""
    cp = shutil.which("cp")
    if cp is None:
        return None
    now = scan(tree, pristine)
    removed = _remove_touched(tree, now, pristine)
    if removed is None:
        return None
    missing = [path for path in wanted if path not in now or path in removed]
    restored = _topmost(missing)
    if restored and not _copy_from(cp, template, tree, restored):
        return None
    touched_dirs = [
        path
        for path, entry in now.items()
        if stat.S_ISDIR(entry.mode)
        and path in pristine  # a new dir went whole, with what it held
        and path not in removed
        and _touched(entry, pristine[path])
    ]
    kept_dirs = {*touched_dirs, *(_parent(p) for p in [*removed, *restored])}
    for path in kept_dirs:
        if path and path in wanted and not _same_xattrs(tree / path, template / path):
            return None  # a step set an xattr on a dir it kept: not worth putting back
    for path in sorted(kept_dirs, key=_depth):
        _set_metadata(tree / path if path else tree, wanted.get(path), template)
    after = scan(tree, now)
    if not _equal(after, wanted) or not _same_top(tree, template):
        return None
    return after


def _remove_touched(tree: Path, now: Manifest, pristine: Manifest) -> set[str] | None:
    """Remove every entry a step made or touched, but dirs that stay dirs (their metadata is
    set afterwards); the paths removed, or None when a touched file had other names (a hard
    link group the template shares would be split by restoring one name)."""
    removed: set[str] = set()
    for path in sorted(now):  # parents before children
        if _parent_in(path, removed):
            continue
        entry, before = now[path], pristine.get(path)
        if not _touched(entry, before):
            continue
        if before is not None and stat.S_ISDIR(entry.mode) and stat.S_ISDIR(before.mode):
            continue
        if before is not None and not stat.S_ISDIR(before.mode) and before.links > 1:
            return None
        target = tree / path
        if stat.S_ISDIR(entry.mode):
            shutil.rmtree(target)  # never follows a symlink inside
        else:
            os.unlink(target)
        removed.add(path)
    return removed


def _touched(entry: Entry, before: Entry | None) -> bool:
    return (
        before is None
        or entry != before
        or entry.ctime_ns != before.ctime_ns
        or entry.links != before.links
    )


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _depth(path: str) -> int:
    return -path.count("/") - (1 if path else 0)  # deepest first, the tree's own top last


def _topmost(paths: list[str]) -> list[str]:
    """The paths none of whose parents is in `paths` (a dir is copied with what it holds)."""
    chosen = set(paths)
    return [path for path in sorted(paths) if not _parent_in(path, chosen)]


def _parent_in(path: str, chosen: set[str]) -> bool:
    """Whether a dir above `path` is in `chosen`."""
    parent = _parent(path)
    while parent:
        if parent in chosen:
            return True
        parent = _parent(parent)
    return False


def _copy_from(cp: str, template: Path, tree: Path, paths: list[str]) -> bool:
    """`cp -a` each path of `template` to the same place in `tree` (their parents exist)."""
    for start in range(0, len(paths), ARGS_PER_CP):
        chunk = paths[start : start + ARGS_PER_CP]
        copied = subprocess.run(
            [cp, "-a", "--parents", "--", *chunk, str(tree)],
            cwd=template,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        if copied.returncode != 0:
            return False
    return True


def _same_xattrs(path: Path, model: Path) -> bool:
    try:
        names = sorted(os.listxattr(path, follow_symlinks=False))
        if names != sorted(os.listxattr(model, follow_symlinks=False)):
            return False
        return all(
            os.getxattr(path, name, follow_symlinks=False)
            == os.getxattr(model, name, follow_symlinks=False)
            for name in names
        )
    except OSError:
        return False


def _set_metadata(path: Path, entry: Entry | None, template: Path) -> None:
    """The owner, mode and times of a kept dir, as the template has them (the tree's top has
    no manifest entry: the template's own top is read)."""
    if entry is None:
        info = os.lstat(template)
        uid, gid, mode, mtime = info.st_uid, info.st_gid, info.st_mode, info.st_mtime_ns
    else:
        uid, gid, mode, mtime = entry.uid, entry.gid, entry.mode, entry.mtime_ns
    os.chown(path, uid, gid, follow_symlinks=False)
    os.chmod(path, stat.S_IMODE(mode))
    os.utime(path, ns=(mtime, mtime), follow_symlinks=False)


def _equal(after: Manifest, wanted: Manifest) -> bool:
    """Every path, with the same type, mode, owner, size, mtime, link target and link count
    (inodes differ: the tree is a copy)."""
    if after.keys() != wanted.keys():
        return False
    for path, entry in after.items():
        model = wanted[path]
        if (
            entry.mode != model.mode
            or entry.uid != model.uid
            or entry.gid != model.gid
            or entry.link != model.link
            or entry.links != model.links
            or (entry.mtime_ns != model.mtime_ns and not stat.S_ISLNK(entry.mode))
            or (entry.size != model.size and not stat.S_ISDIR(entry.mode))
        ):
            return False
    return True


def _same_top(tree: Path, template: Path) -> bool:
    mine, model = os.lstat(tree), os.lstat(template)
    return (mine.st_mode, mine.st_uid, mine.st_gid, mine.st_mtime_ns) == (
        model.st_mode,
        model.st_uid,
        model.st_gid,
        model.st_mtime_ns,
    )
