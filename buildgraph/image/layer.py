"""Write OCI layer blobs: a directory tree or an imported tarball, compressed and digested."""

from __future__ import annotations

import hashlib
import lzma
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard
from zlib_ng import gzip_ng, zlib_ng

from buildgraph.errors import InputError, UnsafeArchiveError
from buildgraph.image.codec import CHUNK, compressor, decompressed
from buildgraph.image.mediatypes import OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD

MEDIA_TYPES = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER}
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.")
PAX_XATTR_PREFIX = "SCHILY.xattr."

# What a damaged or truncated archive raises on the way in; it becomes an InputError.
ARCHIVE_ERRORS = (
    tarfile.TarError,
    EOFError,
    zlib_ng.error,
    gzip_ng.BadGzipFile,
    zstandard.ZstdError,
    lzma.LZMAError,
)

# Host-specific labels that would make layers differ between machines.
_SKIPPED_XATTRS = ("security.selinux",)
# Upper-dir features that move data elsewhere; a layer written from such a dir would be wrong.
_UNSUPPORTED_OVERLAY_XATTRS = ("redirect", "metacopy")


@dataclass(frozen=True, slots=True)
class LayerBlob:
    digest: str  # "sha256:<hex>" of the compressed blob bytes
    diff_id: str  # "sha256:<hex>" of the uncompressed tar
    size: int  # bytes of the compressed blob
    media_type: str  # OCI_LAYER_GZIP / OCI_LAYER_ZSTD / OCI_LAYER (compression "none")


Entries = Iterator[tuple[tarfile.TarInfo, BinaryIO | None]]


def write_layer(
    root: Path,
    out: BinaryIO,
    *,
    compression: str = "gzip",
    level: int | None = None,
    epoch: int | None = None,
    whiteouts: str = "overlay",
    exclude: Callable[[str], bool] | None = None,
    whiteout_names: frozenset[str] = frozenset(),
    threads: int | None = None,
) -> LayerBlob:
    """Stream the tree below `root` as a sorted, reproducible layer tar into `out`. In overlay
    mode a 0/0 character device is a whiteout, and so is any entry named in `whiteout_names`
    (where mknod is not allowed, e.g. in an unprivileged container, a placeholder file)."""
    if whiteouts not in ("overlay", "none"):
        raise InputError(f"unknown whiteout mode {whiteouts!r} (expected overlay or none)")
    overlay = whiteouts == "overlay"
    marked = whiteout_names if overlay else frozenset()
    entries = _tree_entries(Path(root), epoch, overlay, exclude or _keep_all, marked)
    return _pack(entries, out, compression, level, threads)


def layer_from_tar(
    source: BinaryIO,
    out: BinaryIO,
    *,
    compression: str = "gzip",
    level: int | None = None,
    epoch: int | None = None,
) -> LayerBlob:
    """Re-pack a root filesystem tarball (any common compression) as a layer, entry by entry."""
    try:
        with tarfile.open(fileobj=decompressed(source), mode="r|") as tar:
            return _pack(_imported_entries(tar, epoch), out, compression, level)
    except ARCHIVE_ERRORS as err:
        raise InputError(f"not a valid tar archive: {err}") from err


def compress_tar(
    source: BinaryIO,
    out: BinaryIO,
    *,
    compression: str = "gzip",
    level: int | None = None,
    threads: int | None = None,
) -> LayerBlob:
    """Compress an uncompressed layer tar (streamed) for a registry; reproducible output."""
    sink = _BlobSink(out, compression, level, threads)
    try:
        while chunk := source.read(CHUNK):
            sink.write(chunk)
        return sink.finish(MEDIA_TYPES[compression])
    finally:
        sink.abandon()


def normalize_name(name: str, entry: str | None = None) -> str:
    """`./a//b/` -> `a/b`; "" for the root entry; refuses `..` components.

    `entry` is the tar entry to name in the error when `name` is its link target.
    """
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        where = f"tar entry {entry!r} links to {name!r}" if entry else f"tar entry {name!r}"
        raise UnsafeArchiveError(f"{where}, which has a '..' component")
    return "/".join(parts)


def pax_xattrs(info: tarfile.TarInfo) -> dict[str, bytes]:
    """The SCHILY.xattr.* records of an entry as raw bytes (tarfile keeps them as text)."""
    return {
        key.removeprefix(PAX_XATTR_PREFIX): value.encode("utf-8", "surrogateescape")
        for key, value in info.pax_headers.items()
        if key.startswith(PAX_XATTR_PREFIX)
    }


# --- packing -------------------------------------------------------------------------------


class _BlobSink:
    """Takes tar bytes, writes compressed bytes to `out`, and hashes both sides on the way.
    Uncompressed, the blob is the tar itself: one hash serves as digest and diff_id."""

    def __init__(
        self, out: BinaryIO, compression: str, level: int | None, threads: int | None = None
    ) -> None:
        self._out = out
        self._plain = compression == "none"
        self._compressor = compressor(compression, level, threads)
        self._diff = hashlib.sha256()
        self._blob = self._diff if self._plain else hashlib.sha256()
        self._offset = 0
        self._size = 0
        self._finished = False

    def write(self, data: bytes) -> int:
        self._diff.update(data)
        self._offset += len(data)
        if self._plain:
            self._size += len(data)
            self._out.write(data)
        else:
            self._emit(self._compressor.compress(data))
        return len(data)

    def tell(self) -> int:  # tarfile asks for the start offset
        return self._offset

    def finish(self, media_type: str) -> LayerBlob:
        self._emit(self._compressor.flush())
        self._finished = True
        digest, diff_id = self._blob.hexdigest(), self._diff.hexdigest()
        return LayerBlob(f"sha256:{digest}", f"sha256:{diff_id}", self._size, media_type)

    def abandon(self) -> None:
        """Stop compressor threads after a failure; a no-op once finished."""
        close = getattr(self._compressor, "close", None)
        if not self._finished and close is not None:
            close()

    def _emit(self, data: bytes) -> None:
        if data:
            self._blob.update(data)
            self._size += len(data)
            self._out.write(data)


def _pack(
    entries: Entries,
    out: BinaryIO,
    compression: str,
    level: int | None,
    threads: int | None = None,
) -> LayerBlob:
    if compression not in MEDIA_TYPES:
        raise InputError(f"unknown layer compression {compression!r} (gzip, zstd or none)")
    sink = _BlobSink(out, compression, level, threads)
    try:
        tar = tarfile.TarFile(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT)  # type: ignore[arg-type]
        tar.copybufsize = CHUNK
        for info, data in entries:
            tar.addfile(info, data)
            tar.members.clear()  # tarfile remembers every member; memory must stay flat
        tar.close()
        return sink.finish(MEDIA_TYPES[compression])
    finally:
        sink.abandon()


# --- directory trees -----------------------------------------------------------------------


def _keep_all(_: str) -> bool:
    return False


def _tree_entries(
    root: Path,
    epoch: int | None,
    overlay: bool,
    exclude: Callable[[str], bool],
    marked: frozenset[str] = frozenset(),
) -> Entries:
    """Depth first, parents before children, each directory's whiteouts before its entries."""
    first_names: dict[tuple[int, int], str] = {}  # (dev, inode) -> first name, for hardlinks
    stack = [iter(_children(root, "", overlay, exclude, marked))]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
            continue
        path, name, st = child
        if overlay and (_is_whiteout(st) or name in marked):
            head, _, base = name.rpartition("/")
            marker = f"{head}/{WHITEOUT_PREFIX}{base}" if head else f"{WHITEOUT_PREFIX}{base}"
            yield _marker_info(marker, st, epoch), None
            continue
        xattrs, opaque = _read_xattrs(path, name, overlay)
        if stat.S_ISDIR(st.st_mode):
            yield _stat_info(path, name, st, epoch, xattrs), None
            if opaque:  # the marker goes before anything else in the directory
                yield _marker_info(f"{name}/{OPAQUE_MARKER}", st, epoch), None
            stack.append(iter(_children(path, name, overlay, exclude, marked)))
        else:
            yield from _file_entry(path, name, st, epoch, xattrs, first_names)


def _children(
    directory: Path,
    prefix: str,
    overlay: bool,
    exclude: Callable[[str], bool],
    marked: frozenset[str] = frozenset(),
) -> list[tuple[Path, str, os.stat_result]]:
    """Sorted by byte order of names; in overlay mode whiteout devices come first."""
    found = []
    with os.scandir(directory) as listing:
        for item in listing:
            name = f"{prefix}/{item.name}" if prefix else item.name
            if not exclude(name):
                found.append((Path(item.path), name, item.stat(follow_symlinks=False)))
    found.sort(key=lambda child: os.fsencode(child[0].name))
    if overlay:
        found.sort(key=lambda child: not (_is_whiteout(child[2]) or child[1] in marked))
    return found


def _file_entry(
    path: Path,
    name: str,
    st: os.stat_result,
    epoch: int | None,
    xattrs: dict[str, bytes],
    first_names: dict[tuple[int, int], str],
) -> Entries:
    info = _stat_info(path, name, st, epoch, xattrs)
    if info.type is None:
        return  # sockets are not carried, like docker
    if st.st_nlink > 1:
        first = first_names.setdefault((st.st_dev, st.st_ino), name)
        if first != name:
            info.type, info.linkname, info.size = tarfile.LNKTYPE, first, 0
            info.pax_headers = {}
            yield info, None
            return
    if info.type == tarfile.REGTYPE:
        with open(path, "rb", buffering=0) as handle:
            yield info, handle
    else:
        yield info, None


def _stat_info(
    path: Path, name: str, st: os.stat_result, epoch: int | None, xattrs: dict[str, bytes]
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.mtime = _clamp(int(st.st_mtime), epoch)
    info.pax_headers = {
        f"{PAX_XATTR_PREFIX}{key}": value.decode("utf-8", "surrogateescape")
        for key, value in sorted(xattrs.items())
    }
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFREG:
        info.type, info.size = tarfile.REGTYPE, st.st_size
    elif kind == stat.S_IFDIR:
        info.type = tarfile.DIRTYPE
    elif kind == stat.S_IFLNK:
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        info.type = tarfile.CHRTYPE if kind == stat.S_IFCHR else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif kind == stat.S_IFIFO:
        info.type = tarfile.FIFOTYPE
    else:
        info.type = None  # type: ignore[assignment]  # a socket
    return info


def _marker_info(name: str, st: os.stat_result, epoch: int | None) -> tarfile.TarInfo:
    """An empty file standing for a whiteout, owned like the device or dir it came from."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size = tarfile.REGTYPE, 0o600, 0
    info.uid, info.gid, info.mtime = st.st_uid, st.st_gid, _clamp(int(st.st_mtime), epoch)
    return info


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _read_xattrs(path: Path, name: str, overlay: bool) -> tuple[dict[str, bytes], bool]:
    """The extended attributes to carry, and whether overlayfs marked the directory opaque."""
    found: dict[str, bytes] = {}
    opaque = False
    for key in os.listxattr(path, follow_symlinks=False):
        if key in _SKIPPED_XATTRS:
            continue
        prefix = next((p for p in OVERLAY_XATTR_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            found[key] = os.getxattr(path, key, follow_symlinks=False)
            continue
        if not overlay:
            continue  # overlay's bookkeeping never goes into a layer
        feature = key.removeprefix(prefix)
        if feature in _UNSUPPORTED_OVERLAY_XATTRS:
            raise InputError(
                f"{name}: overlay {feature} is not supported; mount with "
                "redirect_dir=off,metacopy=off"
            )
        if feature == "opaque":
            opaque = os.getxattr(path, key, follow_symlinks=False) == b"y"
    return found, opaque


def _clamp(mtime: int, epoch: int | None) -> int:
    return mtime if epoch is None else min(mtime, epoch)


# --- imported tarballs ---------------------------------------------------------------------


def _imported_entries(tar: tarfile.TarFile, epoch: int | None) -> Entries:
    while (member := tar.next()) is not None:
        tar.members.clear()  # streaming: forget what was already copied
        name = normalize_name(member.name)
        if not name:
            continue  # the "." root entry: the image root is not an entry
        info = tarfile.TarInfo(name)
        info.type, info.mode = member.type, member.mode
        info.uid, info.gid = member.uid, member.gid
        info.mtime = _clamp(int(member.mtime), epoch)
        info.devmajor, info.devminor = member.devmajor, member.devminor
        info.pax_headers = {  # only xattrs: times and names are ours to set
            key: value
            for key, value in sorted(member.pax_headers.items())
            if key.startswith(PAX_XATTR_PREFIX)
        }
        if member.islnk():
            info.linkname = normalize_name(member.linkname, member.name)
        elif member.issym():
            info.linkname = member.linkname  # a symlink target is data, kept as is
        if member.isreg():
            info.type, info.size = tarfile.REGTYPE, member.size
            yield info, tar.extractfile(member)
        else:
            yield info, None
