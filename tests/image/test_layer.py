"""Layer writing: entry types, digests, reproducibility, overlay whiteouts, re-packed tarballs."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import lzma
import os
import struct
import subprocess
import tarfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from buildgraph.errors import UnsafeArchiveError
from buildgraph.image.codec import open_layer
from buildgraph.image.layer import LayerBlob, layer_from_tar, write_layer
from buildgraph.image.mediatypes import OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD

LONG_NAME = "deep/" + "x" * 60 + "/" + "y" * 80 + ".txt"  # > 100 bytes: needs PAX
# cap_net_bind_service, effective (struct vfs_cap_data, revision 2)
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)
EPOCH = 1_600_000_000
COMPRESSIONS = ["gzip", "zstd", "none"]


def make_tree(root: Path) -> Path:
    """Every entry type a layer carries, with the metadata that must survive."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "bin").mkdir()
    (root / "bin/tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chmod(root / "bin/tool", 0o4755)
    os.setxattr(root / "bin/tool", "security.capability", CAPABILITY)
    os.link(root / "bin/tool", root / "bin/tool-again")
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "empty").mkdir()
    (root / "owned.txt").write_text("owned\n")
    os.chown(root / "owned.txt", 1000, 2000)
    os.setxattr(root / "owned.txt", "user.note", b"\xffbinary\x00value")
    (root / "link").symlink_to("/bin/tool")
    os.chown(root / "link", 3, 4, follow_symlinks=False)
    (root / "café").mkdir()
    (root / "café/ünïcødé.txt").write_text("ü\n")
    (root / LONG_NAME).parent.mkdir(parents=True)
    (root / LONG_NAME).write_text("long\n")
    os.mknod(root / "null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mknod(root / "loop0", 0o660 | 0o060000, os.makedev(7, 0))
    os.mkfifo(root / "fifo", 0o640)
    for path in sorted(root.rglob("*"), reverse=True):  # fixed times, children first
        os.utime(path, (EPOCH - 100, EPOCH - 100), follow_symlinks=False)
    return root


def write(root: Path, **options: object) -> tuple[bytes, LayerBlob]:
    out = io.BytesIO()
    blob = write_layer(root, out, **options)  # type: ignore[arg-type]
    return out.getvalue(), blob


def members(data: bytes, media_type: str = OCI_LAYER_GZIP) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=open_layer(io.BytesIO(data), media_type), mode="r|") as tar:
        return list(tar)


def decompress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.decompress(data)
    if compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return data


@contextlib.contextmanager
def overlay_mount(lower: Path, upper: Path, work: Path, merged: Path) -> Iterator[Path]:
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, merged], check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", merged], check=True)


def test_layer_holds_every_entry_type(tmp_path: Path) -> None:
    data, _ = write(make_tree(tmp_path / "root"))
    by_name = {member.name: member for member in members(data)}
    assert list(by_name) == [
        "bin",
        "bin/tool",
        "bin/tool-again",
        "café",
        "café/ünïcødé.txt",
        "deep",
        "deep/" + "x" * 60,
        LONG_NAME,
        "empty",
        "fifo",
        "link",
        "loop0",
        "null",
        "owned.txt",
        "tmp",
    ]
    tool, again = by_name["bin/tool"], by_name["bin/tool-again"]
    assert (tool.type, tool.mode, tool.size) == (tarfile.REGTYPE, 0o4755, 20)
    assert tool.pax_headers["SCHILY.xattr.security.capability"].encode(
        "utf-8", "surrogateescape"
    ) == (CAPABILITY)
    assert (again.type, again.linkname, again.size) == (tarfile.LNKTYPE, "bin/tool", 0)
    assert (by_name["tmp"].type, by_name["tmp"].mode) == (tarfile.DIRTYPE, 0o1777)
    owned = by_name["owned.txt"]
    assert (owned.uid, owned.gid, owned.uname, owned.gname) == (1000, 2000, "", "")
    assert owned.pax_headers["SCHILY.xattr.user.note"].encode("utf-8", "surrogateescape") == (
        b"\xffbinary\x00value"
    )
    link = by_name["link"]
    assert (link.type, link.linkname, link.uid, link.gid) == (tarfile.SYMTYPE, "/bin/tool", 3, 4)
    assert (by_name["null"].type, by_name["null"].devmajor, by_name["null"].devminor) == (
        tarfile.CHRTYPE,
        1,
        3,
    )
    assert (by_name["loop0"].type, by_name["loop0"].devmajor) == (tarfile.BLKTYPE, 7)
    assert by_name["fifo"].type == tarfile.FIFOTYPE
    assert all(member.mtime == EPOCH - 100 for member in by_name.values())
    assert not any("atime" in m.pax_headers or "ctime" in m.pax_headers for m in by_name.values())


def test_system_tar_reads_the_layer(tmp_path: Path) -> None:
    data, _ = write(make_tree(tmp_path / "root"))
    (tmp_path / "layer.tar.gz").write_bytes(data)
    listing = subprocess.run(
        ["tar", "-tzvf", tmp_path / "layer.tar.gz"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    ).stdout.splitlines()
    assert len(listing) == 15
    assert any(line.endswith("bin/tool-again link to bin/tool") for line in listing)
    assert any(line.startswith("-rwsr-xr-x 0/0") and "bin/tool" in line for line in listing)
    assert any(line.endswith(LONG_NAME) for line in listing)
    assert any(line.startswith("drwxrwxrwt") and "tmp/" in line for line in listing)


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_digests_describe_the_bytes_written(tmp_path: Path, compression: str) -> None:
    data, blob = write(make_tree(tmp_path / "root"), compression=compression)
    media_types = {"gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD, "none": OCI_LAYER}
    assert blob.media_type == media_types[compression]
    assert blob.size == len(data)
    assert blob.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    tar_bytes = decompress(data, compression)
    assert blob.diff_id == "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    assert len(members(data, blob.media_type)) == 15


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_epoch_makes_layers_byte_identical(tmp_path: Path, compression: str) -> None:
    root = make_tree(tmp_path / "root")
    for path in root.rglob("*"):  # newer than the epoch, so clamped
        os.utime(path, (EPOCH + 5000, EPOCH + 5000), follow_symlinks=False)
    first, first_blob = write(root, compression=compression, epoch=EPOCH)
    (root / "owned.txt").touch()
    (root / "bin").touch()
    second, second_blob = write(root, compression=compression, epoch=EPOCH)
    assert first == second
    assert first_blob == second_blob
    assert {member.mtime for member in members(first, first_blob.media_type)} == {EPOCH}


def test_epoch_keeps_older_mtimes(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "root")
    os.utime(root / "owned.txt", (EPOCH + 10, EPOCH + 10))
    by_name = {m.name: m for m in members(write(root, epoch=EPOCH - 50)[0])}
    assert by_name["owned.txt"].mtime == EPOCH - 50
    assert by_name["bin/tool"].mtime == EPOCH - 100


def test_gzip_header_is_reproducible(tmp_path: Path) -> None:
    data, _ = write(make_tree(tmp_path / "root"), compression="gzip")
    flags, mtime = data[3], struct.unpack("<I", data[4:8])[0]
    assert data[:2] == b"\x1f\x8b"
    assert flags & 0x08 == 0  # no FNAME
    assert mtime == 0


def test_overlay_upper_dir_becomes_whiteouts(tmp_path: Path) -> None:
    lower, upper, work, merged = (tmp_path / name for name in ("lower", "upper", "work", "m"))
    for directory in (lower / "dir", upper, work, merged):
        directory.mkdir(parents=True)
    (lower / "gone.txt").write_text("lower\n")
    (lower / "kept.txt").write_text("lower\n")
    (lower / "dir/old.txt").write_text("lower\n")
    with overlay_mount(lower, upper, work, merged):
        (merged / "gone.txt").unlink()
        subprocess.run(["rm", "-rf", merged / "dir"], check=True)
        (merged / "dir").mkdir()
        (merged / "dir/-first").write_text("sorts before .wh.\n")  # '-' < '.'
        (merged / "-early").write_text("sorts before .wh.\n")
    data, _ = write(upper)
    entries = members(data)
    names = [member.name for member in entries]
    assert names == [".wh.gone.txt", "-early", "dir", "dir/.wh..wh..opq", "dir/-first"]
    assert all(m.type == tarfile.REGTYPE for m in entries if ".wh." in m.name)
    assert not any("overlay" in key for m in entries for key in m.pax_headers)


def test_whiteouts_none_keeps_devices_as_they_are(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    os.mknod(tmp_path / "root/gone", 0o020000, os.makedev(0, 0))
    by_name = {m.name: m for m in members(write(tmp_path / "root", whiteouts="none")[0])}
    assert by_name["gone"].type == tarfile.CHRTYPE
    assert list(by_name) == ["gone"]


def test_exclude_skips_paths_and_their_children(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "root")
    skipped = {"bin", "owned.txt"}
    data, _ = write(root, exclude=lambda name: name in skipped)
    names = [member.name for member in members(data)]
    assert not [name for name in names if name.startswith(("bin", "owned"))]
    assert "tmp" in names


def test_big_layer_streams_in_flat_memory(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    with open(tmp_path / "root/big", "wb") as handle:
        handle.truncate(300 * 1024 * 1024)  # sparse: 300 MB of zeros, no disk
    sink = HashingSink()
    tracemalloc.start()
    try:
        blob = write_layer(tmp_path / "root", sink, compression="gzip", level=1)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert blob.digest == "sha256:" + sink.hash.hexdigest()
    assert blob.diff_id != blob.digest
    assert peak < 50 * 1024 * 1024


class HashingSink:
    """A write-only file that keeps nothing but a digest."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return len(data)


# --- layer_from_tar ------------------------------------------------------------------------


def rootfs_tarball(entries: list[tuple[str, str, bytes | str]]) -> bytes:
    """A tarball from (name, kind, content-or-linkname) rows, kind one of dir/file/hard/sym."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.mtime = EPOCH + 1000
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind == "file":
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.type = tarfile.LNKTYPE if kind == "hard" else tarfile.SYMTYPE
                info.linkname = str(payload)
                tar.addfile(info)
    return buffer.getvalue()


ROOTFS = [
    ("./", "dir", ""),
    ("./etc/", "dir", ""),
    ("./etc/passwd", "file", b"root:x:0:0::/root:/bin/sh\n"),
    ("./etc/passwd-hard", "hard", "./etc/passwd"),
    ("/abs.txt", "file", b"absolute\n"),
    ("./etc/motd", "sym", "../abs.txt"),
]
PACKERS = {
    "plain": lambda data: data,
    "gzip": gzip.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
    "bzip2": bz2.compress,
    "xz": lzma.compress,
}


@pytest.mark.parametrize("packing", list(PACKERS))
def test_layer_from_tar_normalises_names(packing: str) -> None:
    source = io.BytesIO(PACKERS[packing](rootfs_tarball(ROOTFS)))
    out = io.BytesIO()
    blob = layer_from_tar(source, out, compression="zstd", epoch=EPOCH)
    entries = members(out.getvalue(), blob.media_type)
    assert [(m.name, m.type) for m in entries] == [
        ("etc", tarfile.DIRTYPE),
        ("etc/passwd", tarfile.REGTYPE),
        ("etc/passwd-hard", tarfile.LNKTYPE),
        ("abs.txt", tarfile.REGTYPE),
        ("etc/motd", tarfile.SYMTYPE),
    ]
    assert entries[2].linkname == "etc/passwd"
    assert entries[4].linkname == "../abs.txt"
    assert {m.mtime for m in entries} == {EPOCH}
    assert blob.digest == "sha256:" + hashlib.sha256(out.getvalue()).hexdigest()


def test_layer_from_tar_copies_file_content() -> None:
    out = io.BytesIO()
    blob = layer_from_tar(io.BytesIO(rootfs_tarball(ROOTFS)), out, compression="none")
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        assert tar.extractfile("etc/passwd").read() == b"root:x:0:0::/root:/bin/sh\n"  # type: ignore[union-attr]
    assert blob.diff_id == blob.digest


DOTDOT_CASES = [
    ([("../evil", "file", b"x")], "../evil"),
    ([("a/../../evil", "file", b"x")], "a/../../evil"),
    ([("ok", "file", b"x"), ("hard", "hard", "../ok")], "hard"),
]


@pytest.mark.parametrize(("entries", "named"), DOTDOT_CASES)
def test_layer_from_tar_refuses_dotdot(
    entries: list[tuple[str, str, bytes | str]], named: str
) -> None:
    with pytest.raises(UnsafeArchiveError) as caught:
        layer_from_tar(io.BytesIO(rootfs_tarball(entries)), io.BytesIO())
    assert repr(named) in str(caught.value)
