"""Mend an overlay upper dir so it is the step's true diff before it becomes a layer.

overlayfs copies a file up alone when one of its hardlinked names is written: the other
names, still in a lower layer, keep the old content and the link is broken. Docker's result
(and buildah's) has every name of the file carrying the new content, still linked. So each
copied-up file whose lower inode had other names gets those names back, as links, in the
upper dir."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path


def relink_copied_up(upper: Path, lowers: Sequence[Path]) -> int:
    """Add the missing hardlink names of copied-up files to `upper`; returns how many."""
    inodes_of: dict[Path, dict[int, list[str]]] = {}  # lower -> inode -> names (built lazily)
    added = 0
    for directory, _dirs, files in os.walk(upper):
        for name in files:
            path = Path(directory, name)
            relative = str(path.relative_to(upper))
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode):
                continue
            origin = _first_lower_with(relative, lowers)
            if origin is None:
                continue
            lower, lower_info = origin
            if lower_info.st_nlink < 2 or not stat.S_ISREG(lower_info.st_mode):
                continue
            if lower not in inodes_of:
                inodes_of[lower] = _inodes(lower)
            for other in inodes_of[lower].get(lower_info.st_ino, []):
                if other == relative or _present(upper, other):
                    continue  # written by the command too (or deleted: a whiteout is there)
                if _hidden_above(other, lowers, lower):
                    continue
                target = upper / other
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, target)
                added += 1
    return added


def _first_lower_with(relative: str, lowers: Sequence[Path]) -> tuple[Path, os.stat_result] | None:
    for lower in lowers:  # topmost first
        try:
            return lower, (lower / relative).lstat()
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            return None
    return None


def _inodes(lower: Path) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for directory, _dirs, files in os.walk(lower):
        for name in files:
            path = Path(directory, name)
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
                found.setdefault(info.st_ino, []).append(str(path.relative_to(lower)))
    return found


def _present(upper: Path, relative: str) -> bool:
    return os.path.lexists(upper / relative)


def _hidden_above(relative: str, lowers: Sequence[Path], origin: Path) -> bool:
    """A layer above `origin` replaced or deleted that name: it is not the same file anymore."""
    for lower in lowers:
        if lower == origin:
            return False
        if os.path.lexists(lower / relative):
            return True
    return False
