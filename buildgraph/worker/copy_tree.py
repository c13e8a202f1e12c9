"""The in-chroot side of COPY/ADD: expand and resolve sources below a dir fd, copy them in."""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
from collections.abc import Callable

from buildgraph.errors import InputError, StepFailed
from buildgraph.frontend.ignore import IgnoreMatcher
from buildgraph.image.codec import decompressed
from buildgraph.image.layer import ARCHIVE_ERRORS
from buildgraph.image.unpack import Extractor
from buildgraph.worker import nsinit
from buildgraph.worker.copy_plan import (
    CopyJob,
    applied_mode,
    check_source_count,
    clean_parts,
    name_matches,
    resolve_owner,
    split_pattern,
)
from buildgraph.worker.rootfd import (
    DIR_FLAGS,
    FILE_FLAGS,
    copy_data,
    copy_xattrs,
    is_whiteout,
    lstat_or_none,
    open_dir,
    resolve_in_root,
    stat_or_none,
)


class Copier:
    """Runs inside the chroot: reads below `source_fd`, writes to absolute image paths.

    Sources come from the build context (`from_context`, skipping what `ignore` excludes) or
    from a stage's read-only overlay; `chmod` is the checked --chmod mode, if any."""

    def __init__(
        self,
        job: CopyJob,
        chmod: int | None,
        source_fd: int,
        *,
        from_context: bool,
        ignore: IgnoreMatcher,
    ) -> None:
        self.job = job
        self.chmod = chmod
        self.source_fd = source_fd
        self.from_context = from_context
        self.ignore = ignore
        passwd, groups = nsinit.read_db("/etc/passwd"), nsinit.read_db("/etc/group")
        self.owner = resolve_owner(
            self.job.chown, passwd, groups, unknown_is_root=job.unknown_owner_is_root
        )
        self.links: dict[tuple[int, int], str] = {}  # source inode -> first copy (hardlinks)

    def run(self) -> None:
        sources = [match for source in self.job.sources for match in self._expand(source)]
        if self.job.sources and not sources and not self.job.inline:
            return  # only wildcards that matched nothing: BuildKit copies nothing, makes no dir
        dest = self.job.dest
        found = stat_or_none(dest)
        is_dir = found is not None and stat.S_ISDIR(found.st_mode)
        check_source_count(len(sources) + len(self.job.inline), dest, is_dir)
        # fsutil: make the parent (dest itself with a trailing "/"), then resolve dest in the image
        self._make_dirs(dest if dest.endswith("/") else posixpath.dirname(dest))
        real = os.path.realpath(dest)
        for written, parts in sources:
            self._copy_source(written, parts, real)
        for name, content in self.job.inline:
            self._copy_inline(clean_parts(name)[-1], content.encode(), real)

    # --- sources ---------------------------------------------------------------------------

    def _expand(self, source: str) -> list[tuple[list[str], list[str]]]:
        """(path as written, path resolved in the source root) of each source or glob match."""
        literal, pattern = split_pattern(source)
        if self.from_context or not self.job.patterns_from_stage or not pattern:
            # As written: a copied symlink is named after its own path, not its target's.
            matches = [clean_parts(source)]
        else:
            matches = [resolve_in_root(self.source_fd, literal)]
            for part in pattern:  # like filepath.Walk + Match: real dirs only, sorted
                matches = [
                    [*match, name]
                    for match in matches
                    for name in sorted(self._names(match))
                    if name_matches(name, part)
                ]
        found = [(match, resolve_in_root(self.source_fd, match)) for match in matches]
        found = [(match, parts) for match, parts in found if self.lstat_or_none(parts) is not None]
        if not found and pattern and not self.from_context:
            return []  # BuildKit allows a wildcard that matches nothing (AllowEmptyWildcard)
        if not found:
            where = "build context" if self.from_context else "--from stage or image"
            raise InputError(f"source {source!r} not found in the {where}")
        return found

    def _names(self, parts: list[str]) -> list[str]:
        try:
            fd = open_dir(self.source_fd, parts)
        except OSError:
            return []
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def lstat_or_none(self, parts: list[str]) -> os.stat_result | None:
        if not parts:
            return os.fstat(self.source_fd)
        try:
            fd = open_dir(self.source_fd, parts[:-1])
        except OSError:
            return None
        try:
            return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except OSError:
            return None
        finally:
            os.close(fd)

    # --- copying ---------------------------------------------------------------------------

    def _copy_source(self, written: list[str], parts: list[str], real: str) -> None:
        parent_fd = open_dir(self.source_fd, parts[:-1])
        try:
            name = parts[-1] if parts else ""
            info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False) if name else None
            info = info or os.fstat(parent_fd)
            if stat.S_ISLNK(info.st_mode):
                raise InputError(f"source {'/'.join(written)!r}: too many levels of symlinks")
            archive = self.job.add and self.from_context and stat.S_ISREG(info.st_mode)
            if archive and self._extract(parent_fd, name, real):
                return
            # fsutil prepareTargetDir: a file goes into an existing dir, a dir's contents merge
            existing = stat_or_none(real)
            target = real
            if stat.S_ISDIR(info.st_mode):
                if existing is None:
                    self._make_dirs(real)
            else:
                if existing is not None and stat.S_ISDIR(existing.st_mode):
                    target = posixpath.join(real, written[-1])
                self._make_dirs(posixpath.dirname(target))
            self._copy(parent_fd, name, info, "/".join(written), target, nested=False)
        finally:
            os.close(parent_fd)

    def _copy(
        self, dir_fd: int, name: str, info: os.stat_result, rel: str, target: str, nested: bool
    ) -> None:
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd) if name else os.dup(dir_fd)
            try:
                self._copy_dir(fd, info, rel, target, nested, None)
            finally:
                os.close(fd)
            return
        if self.from_context and not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            return  # like walk_selection: the context's key covers files and symlinks only
        existing = lstat_or_none(target)
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise StepFailed(f"cannot replace to directory {target} with file")
        if existing is not None:
            os.unlink(target)
        if stat.S_ISREG(mode):
            self._copy_file(dir_fd, name, info, target)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=dir_fd), target)
            self._set_info(target, info)
        else:
            os.mknod(target, stat.S_IFMT(mode) | 0o600, info.st_rdev)
            self._set_info(target, info)

    def _copy_dir(
        self,
        fd: int,
        info: os.stat_result,
        rel: str,
        target: str,
        nested: bool,
        make_parent: Callable[[], None] | None,
    ) -> None:
        """Copy a dir's entries into `target`. With `make_parent` the dir is excluded but an
        exception may re-include something below: it is made only when something is."""
        made = created = False

        def make() -> None:
            nonlocal made, created
            if made:
                return
            if make_parent is not None:
                make_parent()
            existing = lstat_or_none(target)
            if existing is None:
                os.mkdir(target, 0o700)
                created = True
            elif not stat.S_ISDIR(existing.st_mode):
                raise StepFailed(f"cannot copy to non-directory: {target}")
            made = True

        if make_parent is None:
            make()
        with os.scandir(fd) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        for entry in entries:
            child_rel = f"{rel}/{entry.name}" if rel else entry.name
            try:
                child_info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # a whiteout listed in a dir of one overlay layer only
                continue
            if is_whiteout(child_info) and not self.from_context:
                continue
            child_target = posixpath.join(target, entry.name)
            if self.from_context and self.ignore.matches(child_rel):
                if stat.S_ISDIR(child_info.st_mode) and not self.ignore.can_skip_dir(child_rel):
                    child_fd = os.open(entry.name, DIR_FLAGS, dir_fd=fd)
                    try:
                        self._copy_dir(child_fd, child_info, child_rel, child_target, True, make)
                    finally:
                        os.close(child_fd)
                continue
            make()
            self._copy(fd, entry.name, child_info, child_rel, child_target, nested=True)
        if made and (created or nested):  # fsutil keeps the metadata of an existing top dir
            target_fd = os.open(target, DIR_FLAGS)
            try:
                self._set_info(target, info, target_fd, fd)
            finally:
                os.close(target_fd)

    def _copy_file(self, dir_fd: int, name: str, info: os.stat_result, target: str) -> None:
        key = (info.st_dev, info.st_ino)
        if info.st_nlink > 1 and key in self.links:  # same source inode: keep the hardlink
            os.link(self.links[key], target, follow_symlinks=False)
            return
        source = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(source).st_mode):
                raise StepFailed(f"source {name!r} changed while being copied")
            out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                copy_data(source, out)
                self._set_info(target, info, out, source)
            finally:
                os.close(out)
        finally:
            os.close(source)
        if info.st_nlink > 1:
            self.links[key] = target

    def _copy_inline(self, name: str, data: bytes, real: str) -> None:
        """A heredoc file: BuildKit makes it 0644 root:root in scratch, then copies it."""
        existing = stat_or_none(real)
        target = posixpath.join(real, name) if existing and stat.S_ISDIR(existing.st_mode) else real
        self._make_dirs(posixpath.dirname(target))
        found = lstat_or_none(target)
        if found is not None and stat.S_ISDIR(found.st_mode):
            raise StepFailed(f"cannot replace to directory {target} with file")
        if found is not None:
            os.unlink(target)
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(out, view) :]
            uid, gid = self.owner or (0, 0)
            os.fchown(out, uid, gid)
            os.fchmod(out, applied_mode(0o644, self.chmod))
        finally:
            os.close(out)

    def _set_info(
        self, target: str, info: os.stat_result, fd: int | None = None, source_fd: int | None = None
    ) -> None:
        """Owner first (chown clears setuid bits), then mode, xattrs, times, as fsutil does."""
        owner = (info.st_uid, info.st_gid)
        if self.from_context:
            owner = (0, 0)  # BuildKit's context transfer resets ownership to root
        uid, gid = self.owner or owner
        where: int | str = target if fd is None else fd
        os.chown(where, uid, gid, follow_symlinks=fd is not None)
        if not stat.S_ISLNK(info.st_mode):
            os.chmod(where, applied_mode(info.st_mode, self.chmod))
        if fd is not None and source_fd is not None:
            copy_xattrs(source_fd, fd)
        times = (info.st_atime_ns, info.st_mtime_ns)
        os.utime(where, ns=times, follow_symlinks=fd is not None)

    def _make_dirs(self, path: str) -> None:
        """fsutil MkdirAll: missing dirs are 0755, owned by the --chown user (else root).

        Symlinks on the way are followed inside the image root (we are chrooted there), a
        dangling one too: `ln -s /var/lib/app /app` then `WORKDIR /app` makes /var/lib/app,
        as BuildKit's fs.RootPath resolves it."""
        wanted = posixpath.normpath(path)
        path = os.path.realpath(wanted)
        found = stat_or_none(path)
        if found is not None:
            if stat.S_ISDIR(found.st_mode):
                return
            raise StepFailed(f"mkdir {wanted}: not a directory")
        parent = posixpath.dirname(path)
        if parent != path:
            self._make_dirs(parent)
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            raise StepFailed(f"mkdir {wanted}: exists and is not a directory") from None
        if self.owner:
            os.chown(path, *self.owner, follow_symlinks=False)

    # --- ADD -------------------------------------------------------------------------------

    def _extract(self, dir_fd: int, name: str, real: str) -> bool:
        """Extract a (compressed) tar source into dest; False if it is not one (BuildKit
        isArchivePath: the first tar header must parse). Nothing may land outside dest."""
        with os.fdopen(os.open(name, FILE_FLAGS, dir_fd=dir_fd), "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode) or not _is_archive(handle):
                return False
            handle.seek(0)
            self._make_dirs(real)
            dest_fd = os.open(real, DIR_FLAGS)
            try:
                extractor = Extractor(dest_fd, overlay=False, in_root_links=True)
                with tarfile.open(fileobj=decompressed(handle), mode="r|") as tar:  # type: ignore[call-overload]
                    while (member := tar.next()) is not None:
                        tar.members.clear()
                        if self.owner:  # BuildKit: --chown overrides the archive's owners
                            member.uid, member.gid = self.owner
                        extractor.add(member, tar)
                    extractor.finish()
            except ARCHIVE_ERRORS as err:
                raise InputError(f"ADD {name}: broken archive: {err}") from err
            finally:
                os.close(dest_fd)
        return True


def _is_archive(handle: object) -> bool:
    try:
        with tarfile.open(fileobj=decompressed(handle), mode="r|") as tar:  # type: ignore[arg-type, call-overload]
            return tar.next() is not None
    except (*ARCHIVE_ERRORS, OSError, ValueError):
        return False
