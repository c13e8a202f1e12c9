"""Extract layer blobs safely: nothing written outside the destination, no symlink followed."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from buildgraph.errors import InputError, UnsafeArchiveError
from buildgraph.image.codec import CHUNK, open_layer
from buildgraph.image.layer import (
    ARCHIVE_ERRORS,
    OPAQUE_MARKER,
    OVERLAY_XATTR_PREFIXES,
    WHITEOUT_PREFIX,
    normalize_name,
    pax_xattrs,
)

MAX_SYMLINK_HOPS = 40  # like the kernel's limit for one path lookup
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NODE_KINDS = {
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
}


def unpack_layer(blob: BinaryIO, media_type: str, dest: Path, *, whiteouts: str = "overlay") -> str:
    """Extract one layer into `dest` and return the diff_id of its uncompressed tar."""
    if whiteouts not in ("overlay", "apply"):
        raise InputError(f"unknown whiteout mode {whiteouts!r} (expected overlay or apply)")
    stream = _HashingReader(open_layer(blob, media_type))
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        extractor = Extractor(root_fd, whiteouts == "overlay")
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            while (member := tar.next()) is not None:
                tar.members.clear()  # streaming: memory must not grow with the layer
                extractor.add(member, tar)
            extractor.finish()
        while stream.read(CHUNK):  # the end-of-archive padding counts in the diff_id too
            pass
    except ARCHIVE_ERRORS as err:
        raise InputError(f"layer is not a valid {media_type} blob: {err}") from err
    finally:
        os.close(root_fd)
    return f"sha256:{stream.hexdigest()}"


class _HashingReader:
    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self._hash = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._hash.update(data)
        return data

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


class Extractor:
    """Applies tar entries below `root_fd`, walking every path with O_NOFOLLOW directory fds.

    A symlink on an entry's way is resolved here, by name, and only while it stays below the
    root: a layer may only pass through relative ones. ADD (`in_root_links`) extracts as
    BuildKit does, as if chrooted into the destination: an absolute target starts again at
    the root. A link that climbs above the root is refused in both (BuildKit would clamp it)."""

    def __init__(self, root_fd: int, overlay: bool, *, in_root_links: bool = False) -> None:
        self.root_fd = root_fd
        self.overlay = overlay
        self.in_root_links = in_root_links
        self.created: set[str] = set()  # names written by this layer (opaque keeps them)
        self.dir_times: dict[str, int] = {}  # set last: writing children changes dir mtimes

    def add(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        name = normalize_name(member.name)
        if not name:
            return  # the root entry: dest itself belongs to the caller
        head, _, base = name.rpartition("/")
        if base == OPAQUE_MARKER:
            self._opaque(member, head)
        elif base.startswith(WHITEOUT_PREFIX):
            self._whiteout(member, head, base.removeprefix(WHITEOUT_PREFIX))
        else:
            with self._parent(member.name, head, create=True) as parent_fd:
                self._write(member, tar, parent_fd, base)
            parts = name.split("/")
            self.created.update("/".join(parts[: index + 1]) for index in range(len(parts)))

    def finish(self) -> None:
        for name, mtime in reversed(self.dir_times.items()):
            head, _, base = name.rpartition("/")
            with (
                contextlib.suppress(FileNotFoundError, InputError),  # replaced meanwhile
                self._parent(name, head, create=False) as parent_fd,
            ):
                found = _lstat(base, parent_fd)
                if found is not None and stat.S_ISDIR(found.st_mode):
                    os.utime(base, ns=(mtime, mtime), dir_fd=parent_fd, follow_symlinks=False)

    # --- whiteouts -----------------------------------------------------------------------

    def _whiteout(self, member: tarfile.TarInfo, head: str, hidden: str) -> None:
        if hidden in ("", ".", ".."):
            raise UnsafeArchiveError(f"tar entry {member.name!r} is not a valid whiteout")
        try:
            with self._parent(member.name, head, create=self.overlay) as parent_fd:
                _remove(hidden, parent_fd)
                if self.overlay:  # overlayfs hides a lower file behind a 0/0 char device
                    os.mknod(hidden, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent_fd)
        except FileNotFoundError:
            pass  # applying onto a rootfs: nothing there to delete

    def _opaque(self, member: tarfile.TarInfo, head: str) -> None:
        try:
            with self._parent(member.name, head, create=self.overlay) as directory_fd:
                for child in os.listdir(directory_fd):
                    if _join(head, child) not in self.created:  # hide lower layers only
                        _remove(child, directory_fd)
                if self.overlay:
                    os.setxattr(directory_fd, "trusted.overlay.opaque", b"y")
        except FileNotFoundError:
            pass  # applying onto a rootfs: nothing there to hide

    # --- entries -------------------------------------------------------------------------

    def _write(
        self, member: tarfile.TarInfo, tar: tarfile.TarFile, parent_fd: int, base: str
    ) -> None:
        existing = _lstat(base, parent_fd)
        if member.isdir() and existing is not None and stat.S_ISDIR(existing.st_mode):
            pass  # a directory over a directory keeps its contents, like docker
        elif existing is not None:
            # Replace, never write through: `base` may be a symlink left by an earlier entry.
            _remove(base, parent_fd)
        if member.isdir():
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(base, 0o700, dir_fd=parent_fd)
            fd = os.open(base, _DIR_FLAGS, dir_fd=parent_fd)
            try:
                self._set_metadata(member, parent_fd, base, fd=fd)
            finally:
                os.close(fd)
            self.dir_times[normalize_name(member.name)] = _ns(member.mtime)
        elif member.isreg():
            self._write_file(member, tar, parent_fd, base)
        elif member.issym():
            os.symlink(member.linkname, base, dir_fd=parent_fd)
            self._set_metadata(member, parent_fd, base)
        elif member.islnk():
            self._link(member, parent_fd, base)
        elif member.ischr() or member.isblk() or member.isfifo():
            device = os.makedev(member.devmajor, member.devminor)
            os.mknod(base, _NODE_KINDS[member.type] | 0o600, device, dir_fd=parent_fd)
            self._set_metadata(member, parent_fd, base)
        # Other types (sockets, vendor extensions) are skipped, as docker does.

    def _write_file(
        self, member: tarfile.TarInfo, tar: tarfile.TarFile, parent_fd: int, base: str
    ) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=parent_fd)
        with os.fdopen(fd, "wb") as handle:
            source = tar.extractfile(member)
            if source is not None:
                shutil.copyfileobj(source, handle, CHUNK)
            handle.flush()
            self._set_metadata(member, parent_fd, base, fd=fd)

    def _link(self, member: tarfile.TarInfo, parent_fd: int, base: str) -> None:
        target = normalize_name(member.linkname, member.name)
        target_head, _, target_base = target.rpartition("/")
        if not target_base:
            raise UnsafeArchiveError(f"tar entry {member.name!r} links to the root")
        try:
            parent = self._parent(member.name, target_head, create=False, follow=False)
            with parent as target_fd:
                if _lstat(target_base, target_fd) is None:
                    raise FileNotFoundError(errno.ENOENT, "missing", target)
                os.link(
                    target_base,
                    base,
                    src_dir_fd=target_fd,
                    dst_dir_fd=parent_fd,
                    follow_symlinks=False,  # link a symlink itself, never its target
                )
        except (FileNotFoundError, NotADirectoryError) as err:
            raise UnsafeArchiveError(
                f"tar entry {member.name!r} links to {member.linkname!r}, not in this tree"
            ) from err
        except OSError as err:
            raise InputError(f"tar entry {member.name!r}: cannot link: {err.strerror}") from err

    def _set_metadata(
        self, member: tarfile.TarInfo, parent_fd: int, base: str, *, fd: int | None = None
    ) -> None:
        """Owner first (chown clears setuid bits and capabilities), then mode, xattrs, mtime."""
        if fd is not None:
            os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, member.mode & 0o7777)
        else:
            os.chown(base, member.uid, member.gid, dir_fd=parent_fd, follow_symlinks=False)
            if not member.issym():  # Linux cannot chmod a symlink; a device is not followed
                os.chmod(base, member.mode & 0o7777, dir_fd=parent_fd)
        for key, value in pax_xattrs(member).items():
            if key.startswith(OVERLAY_XATTR_PREFIXES):
                continue  # a layer must not plant overlay redirects or opaque marks
            # Without an fd, go by the parent's fd: no lookup through anything the tar made.
            try:
                if fd is not None:
                    os.setxattr(fd, key, value)
                else:
                    path = f"/proc/self/fd/{parent_fd}/{base}"
                    os.setxattr(path, key, value, follow_symlinks=False)
            except OSError as err:
                if err.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise  # like docker, skip what this filesystem cannot store
        if not member.isdir():
            mtime = _ns(member.mtime)
            os.utime(base, ns=(mtime, mtime), dir_fd=parent_fd, follow_symlinks=False)

    # --- path walking --------------------------------------------------------------------

    @contextlib.contextmanager
    def _parent(self, entry: str, head: str, *, create: bool, follow: bool = True) -> Iterator[int]:
        """An fd of directory `head` below the root.

        Missing directories are made when `create`. A symlink on the way is followed only when
        `follow`, only if relative, and only while it stays below the root: it is resolved here,
        by name, never by the kernel. Anything else is an UnsafeArchiveError naming `entry`.
        """
        pending = [part for part in head.split("/") if part]
        walked: list[str] = []
        fd = os.dup(self.root_fd)
        hops = 0
        try:
            while pending:
                part = pending.pop(0)
                if part == "..":  # only from a symlink target
                    if not walked:
                        raise UnsafeArchiveError(f"tar entry {entry!r} escapes through a symlink")
                    walked.pop()
                    os.close(fd)
                    fd = self._walk_real(walked)
                    continue
                existing = _lstat(part, fd)
                if existing is None:
                    if not create:
                        raise FileNotFoundError(errno.ENOENT, "missing parent", _join(*walked))
                    os.mkdir(part, 0o755, dir_fd=fd)
                elif stat.S_ISLNK(existing.st_mode):
                    target = os.readlink(part, dir_fd=fd)
                    hops += 1
                    absolute = target.startswith("/")
                    if (
                        not follow
                        or (absolute and not self.in_root_links)
                        or hops > MAX_SYMLINK_HOPS
                    ):
                        raise UnsafeArchiveError(
                            f"tar entry {entry!r} has a parent through symlink "
                            f"{_join(*walked, part)!r} -> {target!r}"
                        )
                    if absolute:
                        os.close(fd)
                        fd, walked = os.dup(self.root_fd), []
                    pending[:0] = [p for p in target.split("/") if p not in ("", ".")]
                    continue
                elif not stat.S_ISDIR(existing.st_mode):
                    raise InputError(f"tar entry {entry!r}: {_join(*walked, part)!r} is not a dir")
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd, walked = next_fd, [*walked, part]
            yield fd
        finally:
            os.close(fd)

    def _walk_real(self, parts: list[str]) -> int:
        fd = os.dup(self.root_fd)
        for part in parts:  # every part was a real directory a moment ago: O_NOFOLLOW checks it
            next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        return fd


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove(name: str, dir_fd: int) -> None:
    """Delete `name` (recursively if a real directory) without following any symlink."""
    existing = _lstat(name, dir_fd)
    if existing is None:
        return
    if stat.S_ISDIR(existing.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)  # fd-based, symlink-attack resistant
    else:
        os.unlink(name, dir_fd=dir_fd)


def _join(*parts: str) -> str:
    return "/".join(part for part in parts if part)


def _ns(mtime: float) -> int:
    return int(mtime * 1_000_000_000)
