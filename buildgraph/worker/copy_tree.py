"""The in-chroot side of COPY/ADD: expand and resolve sources below a dir fd, copy them in."""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable

from buildgraph.errors import InputError, StepFailed
from buildgraph.frontend.ignore import IgnoreMatcher
from buildgraph.image.layer import ARCHIVE_ERRORS, OVERLAY_XATTR_PREFIXES, decompressed
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

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO must not block
MAX_SYMLINK_HOPS = 40
SKIPPED_XATTRS = ("security.selinux", *OVERLAY_XATTR_PREFIXES)  # host labels, overlay internals


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
        found = _stat(dest)
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
            matches = [_resolve(self.source_fd, literal)]
            for part in pattern:  # like filepath.Walk + Match: real dirs only, sorted
                matches = [
                    [*match, name]
                    for match in matches
                    for name in sorted(self._names(match))
                    if name_matches(name, part)
                ]
        found = [(match, _resolve(self.source_fd, match)) for match in matches]
        found = [(match, parts) for match, parts in found if self._lstat(parts) is not None]
        if not found and pattern and not self.from_context:
            return []  # BuildKit allows a wildcard that matches nothing (AllowEmptyWildcard)
        if not found:
            where = "build context" if self.from_context else "--from stage or image"
            raise InputError(f"source {source!r} not found in the {where}")
        return found

    def _names(self, parts: list[str]) -> list[str]:
        try:
            fd = _open_dir(self.source_fd, parts)
        except OSError:
            return []
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def _lstat(self, parts: list[str]) -> os.stat_result | None:
        if not parts:
            return os.fstat(self.source_fd)
        try:
            fd = _open_dir(self.source_fd, parts[:-1])
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
        parent_fd = _open_dir(self.source_fd, parts[:-1])
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
            existing = _stat(real)
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
        existing = _lstat(target)
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
            existing = _lstat(target)
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
            if _is_whiteout(child_info) and not self.from_context:
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
                _copy_data(source, out)
                self._set_info(target, info, out, source)
            finally:
                os.close(out)
        finally:
            os.close(source)
        if info.st_nlink > 1:
            self.links[key] = target

    def _copy_inline(self, name: str, data: bytes, real: str) -> None:
        """A heredoc file: BuildKit makes it 0644 root:root in scratch, then copies it."""
        existing = _stat(real)
        target = posixpath.join(real, name) if existing and stat.S_ISDIR(existing.st_mode) else real
        self._make_dirs(posixpath.dirname(target))
        found = _lstat(target)
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
            _copy_xattrs(source_fd, fd)
        times = (info.st_atime_ns, info.st_mtime_ns)
        os.utime(where, ns=times, follow_symlinks=fd is not None)

    def _make_dirs(self, path: str) -> None:
        """fsutil MkdirAll: missing dirs are 0755, owned by the --chown user (else root).

        Symlinks on the way are followed inside the image root (we are chrooted there), a
        dangling one too: `ln -s /var/lib/app /app` then `WORKDIR /app` makes /var/lib/app,
        as BuildKit's fs.RootPath resolves it."""
        wanted = posixpath.normpath(path)
        path = os.path.realpath(wanted)
        found = _stat(path)
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


def _resolve(root_fd: int, parts: list[str]) -> list[str]:
    """Follow symlinks in `parts` as if `root_fd` were "/" (continuity's fs.RootPath): an
    absolute target restarts at the root and ".." stops there. A missing part ends it."""
    pending = list(parts)
    walked: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if walked:
                walked.pop()
            continue
        try:
            fd = _open_dir(root_fd, walked)
        except OSError:
            return [*walked, part, *pending]
        try:
            info = os.stat(part, dir_fd=fd, follow_symlinks=False)
            target = os.readlink(part, dir_fd=fd) if stat.S_ISLNK(info.st_mode) else None
        except OSError:
            return [*walked, part, *pending]
        finally:
            os.close(fd)
        if target is None:
            walked.append(part)
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            return [*walked, part, *pending]  # stays a symlink: the caller reports the loop
        if target.startswith("/"):
            walked = []
        pending[:0] = [p for p in target.split("/") if p not in ("", ".")]
    return walked


def _open_dir(root_fd: int, parts: list[str]) -> int:
    fd = os.dup(root_fd)
    try:
        for part in parts:
            next_fd = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _copy_data(source: int, out: int) -> None:
    while True:
        try:
            if os.sendfile(out, source, None, 1 << 30) == 0:
                return
        except OSError:  # a filesystem without sendfile support: copy through userspace
            while chunk := os.read(source, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
            return


def _copy_xattrs(source_fd: int, fd: int) -> None:
    try:
        names = os.listxattr(source_fd)
    except OSError:
        return
    for key in names:
        if key.startswith(SKIPPED_XATTRS):
            continue
        with contextlib.suppress(OSError):  # like BuildKit: log-and-skip what cannot be stored
            os.setxattr(fd, key, os.getxattr(source_fd, key))


def _is_whiteout(info: os.stat_result) -> bool:
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
