"""Templates of the chroot isolation kept in the cache dir from one build to the next.

A CI job that changes one file of one service lays out its base image's tree again, and
unpacking layers costs about 15x a copy of the tree they make. So when a build ends, the
templates it unpacked (the trees a monorepo's services all start from) move to
`snapshots/.roots/<chain>/` instead of being removed, and the next build copies from them.

Nothing from the disk is trusted blindly: a kept template is used only if a scan of it gives
the manifest written when it was kept, inodes and ctimes included (no unprivileged process
can set a ctime back), else it is removed. A build reads a kept template under a shared
flock; it is removed only under an exclusive one, so never from under another build;
`cache prune` removes them all (it runs when no build holds the cache).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
from pathlib import Path

import xxhash

from buildgraph.worker.treediff import Entry, Manifest, scan

KEEP = 4  # templates kept, most recently used first
KEEP_BYTES = 1 << 30  # and while their files add up to no more (CI caches upload the dir)
MANIFEST = "manifest.json"


def kept_dir(snapshots_root: Path) -> Path:
    return snapshots_root / ".roots"


def name_of(chain: tuple[str, ...]) -> str:
    return xxhash.xxh3_128_hexdigest("\n".join(chain).encode())


class KeptTemplates:
    def __init__(self, directory: Path, keep: int = KEEP, keep_bytes: int = KEEP_BYTES) -> None:
        self.directory = directory
        self.keep = keep
        self.keep_bytes = keep_bytes

    def has(self, chain: tuple[str, ...]) -> bool:
        return (self.directory / name_of(chain) / MANIFEST).is_file()

    def open(self, chain: tuple[str, ...]) -> tuple[Path, Manifest, contextlib.ExitStack] | None:
        """The kept template of `chain`: its dir (`tree` inside), manifest, and the stack that
        releases its shared lock; None if there is none or it is not as it was kept."""
        place = self.directory / name_of(chain)
        release = contextlib.ExitStack()
        try:
            fd = os.open(place, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        release.callback(os.close, fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # an exclusive holder removes it
            kept = json.loads((place / MANIFEST).read_text())
            manifest = {path: Entry(*fields) for path, fields in kept["entries"].items()}
            top = os.lstat(place / "tree")
            found = scan(place / "tree", manifest)
            if (
                kept["chain"] != list(chain)
                or kept["top"] != [top.st_mode, top.st_uid, top.st_gid, top.st_mtime_ns]
                or not _same(found, manifest)
            ):
                release.close()
                self._remove(place)
                return None
            os.utime(place / MANIFEST)  # most recently used
            return place, found, release
        except (OSError, ValueError, KeyError, TypeError):
            release.close()
            self._remove(place)
            return None

    def keep_tree(self, holder: Path, chain: tuple[str, ...], manifest: Manifest) -> bool:
        """Move `holder` (a held dir with the template's `tree`, which `manifest` describes)
        here, if there is none of `chain` yet; then drop the least recently used past the
        limits. True if moved. Never raises: keeping is only a speed-up."""
        place = self.directory / name_of(chain)
        try:
            if place.exists():
                return False
            # Scanned again: the ctimes of a template that was a stage's root moved when its
            # last layer was written out (hard links in and out of the upper dir).
            found = scan(holder / "tree", manifest)
            if found != manifest:
                return False
            top = os.lstat(holder / "tree")
            record = {
                "chain": list(chain),
                "top": [top.st_mode, top.st_uid, top.st_gid, top.st_mtime_ns],
                "entries": {path: _fields(entry) for path, entry in found.items()},
            }
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(holder / "aside")
            (holder / MANIFEST).write_text(json.dumps(record))
            self.directory.mkdir(parents=True, exist_ok=True)
            os.rename(holder, place)  # fails if another build kept the same chain first
        except OSError:
            return False
        self._trim()
        return True

    def _trim(self) -> None:
        kept = []
        for place in list(self.directory.iterdir()):
            if place.name.startswith(".gone-"):  # a removal cut short: its holder died
                shutil.rmtree(place, ignore_errors=True)
                continue
            with contextlib.suppress(OSError):
                kept.append(((place / MANIFEST).stat().st_mtime, place))
        kept.sort(reverse=True)
        total = 0
        for index, (_, place) in enumerate(kept):
            total += _bytes(place)
            if index >= self.keep or (index > 0 and total > self.keep_bytes):
                self._remove(place)

    def _remove(self, place: Path) -> None:
        """Remove `place` unless a build holds it (it then stays until a later trim)."""
        try:
            fd = os.open(place, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            gone = place.with_name(f".gone-{place.name}-{os.getpid()}")
            os.rename(place, gone)
            shutil.rmtree(gone, ignore_errors=True)
        except OSError:
            pass
        finally:
            os.close(fd)


def _fields(entry: Entry) -> list:
    return [
        entry.mode,
        entry.uid,
        entry.gid,
        entry.size,
        entry.mtime_ns,
        entry.inode,
        entry.link,
        entry.ctime_ns,
        entry.links,
    ]


def _same(found: Manifest, kept: Manifest) -> bool:
    """Equal, and every entry's ctime and link count too (what `==` of entries leaves out)."""
    if found != kept:
        return False
    return all(
        entry.ctime_ns == kept[path].ctime_ns and entry.links == kept[path].links
        for path, entry in found.items()
    )


def _bytes(place: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        entries = json.loads((place / MANIFEST).read_text())["entries"].values()
        total = sum(fields[3] for fields in entries if stat.S_ISREG(fields[0]))
    return total
