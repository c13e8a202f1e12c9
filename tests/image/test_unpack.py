"""Layer extraction: round trips, whiteouts on real overlay mounts, and malicious tarballs."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import stat
import struct
import subprocess
import tarfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildgraph.errors import InputError, UnsafeArchiveError
from buildgraph.image.layer import write_layer
from buildgraph.image.mediatypes import OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD
from buildgraph.image.unpack import unpack_layer

EPOCH = 1_600_000_000
GZIP = OCI_LAYER_GZIP
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)
LONG_NAME = "deep/" + "x" * 60 + "/" + "y" * 80 + ".txt"

# A row of a hand-made layer: (name, kind, payload); kind is file/dir/sym/hard/chr.
Row = tuple[str, str, bytes | str]


def make_tree(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "bin/tool").write_bytes(b"#!/bin/sh\necho tool\n")
    os.chown(root / "bin/tool", 1000, 2000)
    os.chmod(root / "bin/tool", 0o4755)
    os.setxattr(root / "bin/tool", "security.capability", CAPABILITY)
    os.link(root / "bin/tool", root / "bin/tool-again")
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "empty").mkdir()
    (root / "note.txt").write_text("note\n")
    os.setxattr(root / "note.txt", "user.note", b"\xffbinary\x00value")
    (root / "link").symlink_to("/etc/passwd")  # an absolute target is just data
    os.chown(root / "link", 3, 4, follow_symlinks=False)
    (root / "up").symlink_to("../../..")
    (root / "café").mkdir()
    (root / "café/ünï.txt").write_text("ü\n")
    (root / LONG_NAME).parent.mkdir(parents=True)
    (root / LONG_NAME).write_text("long\n")
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "loop0", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    os.mkfifo(root / "fifo", 0o640)
    for number, path in enumerate(sorted(root.rglob("*"), reverse=True)):
        os.utime(path, (EPOCH + number, EPOCH + number), follow_symlinks=False)
    return root


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything a layer must carry, per path; hardlinks as the first name of their inode."""
    found: dict[str, tuple[object, ...]] = {}
    first_names: dict[int, str] = {}
    for directory, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            path = Path(directory, name)
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                payload: object = path.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                payload = os.readlink(path)
            else:
                payload = st.st_rdev
            xattrs = {
                key: os.getxattr(path, key, follow_symlinks=False)
                for key in os.listxattr(path, follow_symlinks=False)
                if key != "security.selinux"
            }
            inode = first_names.setdefault(st.st_ino, str(path.relative_to(root)))
            found[str(path.relative_to(root))] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                payload,
                sorted(xattrs.items()),
                int(st.st_mtime),
                inode if not stat.S_ISDIR(st.st_mode) else "",
            )
    return found


def layer_bytes(rows: list[Row]) -> bytes:
    """An uncompressed layer built with tarfile directly, exactly as listed."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in rows:
            info = tarfile.TarInfo(name)
            info.mtime = EPOCH
            if kind == "file":
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "chr":
                info.type = tarfile.CHRTYPE
            else:
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = str(payload)
            tar.addfile(info)
    return buffer.getvalue()


def unpack_rows(rows: list[Row], dest: Path, whiteouts: str = "apply") -> str:
    return unpack_layer(io.BytesIO(layer_bytes(rows)), OCI_LAYER, dest, whiteouts=whiteouts)


@contextlib.contextmanager
def overlay_mount(lowers: list[Path], merged: Path) -> Iterator[Path]:
    """Read-only overlay; `lowers` top first, as overlayfs wants them."""
    merged.mkdir(exist_ok=True)
    options = "lowerdir=" + ":".join(str(lower) for lower in lowers)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, merged], check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", merged], check=True)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_round_trip_keeps_the_tree(tmp_path: Path, compression: str) -> None:
    source = make_tree(tmp_path / "source")
    blob_path = tmp_path / "layer.blob"
    with open(blob_path, "wb") as out:
        blob = write_layer(source, out, compression=compression)
    (tmp_path / "dest").mkdir()
    with open(blob_path, "rb") as handle:
        diff_id = unpack_layer(handle, blob.media_type, tmp_path / "dest")
    assert diff_id == blob.diff_id
    assert snapshot(tmp_path / "dest") == snapshot(source)


def test_diff_id_covers_bytes_after_the_end_marker(tmp_path: Path) -> None:
    layer = layer_bytes([("a", "file", "a")]) + bytes(100_000)  # padding tarfile never reads
    (tmp_path / "dest").mkdir()
    diff_id = unpack_layer(io.BytesIO(layer), OCI_LAYER, tmp_path / "dest")
    assert diff_id == "sha256:" + hashlib.sha256(layer).hexdigest()


def test_leading_slash_names_are_relative(tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    unpack_rows([("/etc/", "dir", ""), ("/etc/hosts", "file", "127.0.0.1\n")], tmp_path / "dest")
    assert (tmp_path / "dest/etc/hosts").read_text() == "127.0.0.1\n"


def test_overlay_whiteouts_become_devices_and_opaque_dirs(tmp_path: Path) -> None:
    lower, top = tmp_path / "lower", tmp_path / "top"
    lower.mkdir()
    top.mkdir()
    unpack_rows(
        [("gone.txt", "file", "x"), ("kept.txt", "file", "x"), ("dir/old.txt", "file", "x")],
        lower,
        "overlay",
    )
    unpack_rows(
        [
            (".wh.gone.txt", "file", ""),
            ("dir", "dir", ""),
            ("dir/.wh..wh..opq", "file", ""),
            ("dir/new.txt", "file", "new"),
        ],
        top,
        "overlay",
    )
    gone = (top / "gone.txt").lstat()
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(top / "dir", "trusted.overlay.opaque") == b"y"
    assert sorted(p.name for p in top.rglob("*")) == ["dir", "gone.txt", "new.txt"]
    with overlay_mount([top, lower], tmp_path / "merged") as merged:
        assert sorted(p.name for p in merged.rglob("*")) == ["dir", "kept.txt", "new.txt"]


def test_real_upper_dir_round_trips_through_overlay(tmp_path: Path) -> None:
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for directory in (lower / "dir", upper, work, merged):
        directory.mkdir(parents=True)
    (lower / "gone.txt").write_text("x")
    (lower / "dir/old.txt").write_text("x")
    options = f"lowerdir={lower},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, merged], check=True)
    try:
        (merged / "gone.txt").unlink()
        subprocess.run(["rm", "-rf", merged / "dir"], check=True)
        (merged / "dir").mkdir()
        (merged / "dir/new.txt").write_text("new")
    finally:
        subprocess.run(["umount", merged], check=True)
    layer = io.BytesIO()
    blob = write_layer(upper, layer)
    (tmp_path / "unpacked").mkdir()
    layer.seek(0)
    unpack_layer(layer, blob.media_type, tmp_path / "unpacked")
    with overlay_mount([tmp_path / "unpacked", lower], tmp_path / "view") as view:
        assert sorted(str(p.relative_to(view)) for p in view.rglob("*")) == ["dir", "dir/new.txt"]


def test_apply_whiteouts_delete_from_the_rootfs(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    unpack_rows([("gone", "dir", ""), ("gone/a", "file", "a"), ("dir/old", "file", "x")], rootfs)
    unpack_rows(
        [
            (".wh.gone", "file", ""),
            ("dir/.wh..wh..opq", "file", ""),
            ("dir/new", "file", "new"),
            ("dir/.wh.never-there", "file", ""),
        ],
        rootfs,
    )
    assert sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*")) == ["dir", "dir/new"]


@pytest.mark.parametrize("whiteouts", ["apply", "overlay"])
def test_late_opaque_marker_keeps_this_layers_entries(tmp_path: Path, whiteouts: str) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    unpack_rows([("dir/old", "file", "x")], dest, whiteouts)
    unpack_rows([("dir/sub/new", "file", "new"), ("dir/.wh..wh..opq", "file", "")], dest, whiteouts)
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == [
        "dir",
        "dir/sub",
        "dir/sub/new",
    ]


def test_add_delete_add_keeps_the_file_when_applied(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    unpack_rows([("etc/conf", "file", "one")], rootfs)
    unpack_rows([("etc/.wh.conf", "file", "")], rootfs)
    assert not (rootfs / "etc/conf").exists()
    unpack_rows([("etc/conf", "file", "three")], rootfs)
    assert (rootfs / "etc/conf").read_text() == "three"


def test_add_delete_add_keeps_the_file_on_overlay(tmp_path: Path) -> None:
    layers = [tmp_path / name for name in ("one", "two", "three")]
    contents: list[list[Row]] = [
        [("etc/conf", "file", "one")],
        [("etc/.wh.conf", "file", "")],
        [("etc/conf", "file", "three")],
    ]
    for layer, rows in zip(layers, contents, strict=True):
        layer.mkdir()
        unpack_rows(rows, layer, "overlay")
    with overlay_mount(layers[1::-1], tmp_path / "after-two") as merged:
        assert not (merged / "etc/conf").exists()
    with overlay_mount(layers[::-1], tmp_path / "after-three") as merged:
        assert (merged / "etc/conf").read_text() == "three"


def test_replacing_entries_follows_docker(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    unpack_rows(
        [("d", "dir", ""), ("d/keep", "file", "k"), ("f", "dir", ""), ("f/x", "file", "x")], dest
    )
    unpack_rows([("s", "file", "file first")], dest)
    unpack_rows([("d", "dir", ""), ("f", "file", "now a file"), ("s", "dir", "")], dest)
    assert (dest / "d/keep").read_text() == "k"  # a dir over a dir keeps its contents
    assert (dest / "f").read_text() == "now a file"
    assert (dest / "s").is_dir()


def test_symlink_then_file_replaces_the_symlink(tmp_path: Path) -> None:
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("safe")
    unpack_rows([("victim", "sym", str(outside / "secret")), ("dir", "sym", str(outside))], dest)
    unpack_rows([("victim", "file", "pwned"), ("dir", "dir", "")], dest)
    assert (outside / "secret").read_text() == "safe"
    assert not (dest / "victim").is_symlink()
    assert (dest / "victim").read_text() == "pwned"
    assert (dest / "dir").is_dir() and not (dest / "dir").is_symlink()


def test_relative_symlink_parent_inside_dest_is_followed(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    unpack_rows([("usr/lib", "dir", ""), ("lib", "sym", "usr/lib")], rootfs)
    unpack_rows([("lib/libc.so", "file", "elf")], rootfs)
    assert (rootfs / "usr/lib/libc.so").read_text() == "elf"
    assert (rootfs / "lib").is_symlink()


def test_absolute_hardlink_stays_inside_dest(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    links_before = os.stat("/etc/passwd").st_nlink
    unpack_rows([("etc/passwd", "file", "mine"), ("etc/hard", "hard", "/etc/passwd")], dest)
    assert (dest / "etc/hard").stat().st_ino == (dest / "etc/passwd").stat().st_ino
    assert os.stat("/etc/passwd").st_nlink == links_before


def test_overlay_xattrs_in_a_tar_are_dropped(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("dir")
        info.type = tarfile.DIRTYPE
        info.pax_headers = {
            "SCHILY.xattr.trusted.overlay.redirect": "/etc",
            "SCHILY.xattr.user.kept": "yes",
        }
        tar.addfile(info)
    (tmp_path / "dest").mkdir()
    buffer.seek(0)
    unpack_layer(buffer, OCI_LAYER, tmp_path / "dest")
    assert os.listxattr(tmp_path / "dest/dir") == ["user.kept"]


# --- malicious layers: each list of layers is applied in order to one dest -----------------

UNSAFE = [
    ("dotdot", [[("../evil", "file", "x")]]),
    ("inner-dotdot", [[("a/../../evil", "file", "x")]]),
    ("symlink-to-root", [[("link", "sym", "/"), ("link/evil", "file", "x")]]),
    ("symlink-outside", [[("link", "sym", "{outside}"), ("link/evil", "file", "x")]]),
    ("symlink-dotdot", [[("link", "sym", "../.."), ("link/evil", "file", "x")]]),
    ("symlink-relative", [[("link", "sym", "../outside"), ("link/evil", "file", "x")]]),
    ("symlink-chain", [[("a", "sym", "b"), ("b", "sym", "../outside"), ("a/evil", "file", "x")]]),
    ("symlink-dir", [[("link", "sym", "{outside}"), ("link/sub", "dir", "")]]),
    ("hardlink-dotdot", [[("evil", "hard", "../outside/secret")]]),
    ("hardlink-absolute", [[("evil", "hard", "/etc/passwd")]]),
    ("hardlink-absolute-outside", [[("evil", "hard", "{outside}/secret")]]),
    ("hardlink-via-symlink", [[("link", "sym", "{outside}"), ("evil", "hard", "link/secret")]]),
    (
        "hardlink-via-inner-symlink",
        [[("real/secret", "file", "x"), ("link", "sym", "real"), ("evil", "hard", "link/secret")]],
    ),
    ("earlier-layer-symlink", [[("etc", "sym", "{outside}")], [("etc/passwd", "file", "x")]]),
    ("whiteout-via-symlink", [[("link", "sym", "{outside}"), ("link/.wh.secret", "file", "")]]),
    ("opaque-via-symlink", [[("link", "sym", "{outside}"), ("link/.wh..wh..opq", "file", "")]]),
    ("whiteout-dotdot", [[(".wh...", "file", "")]]),
    ("symlink-loop", [[("a", "sym", "b"), ("b", "sym", "a"), ("a/evil", "file", "x")]]),
]


def tree_outside(base: Path, dest: Path) -> dict[str, bytes | str]:
    """Every path below `base` except `dest`'s contents, with file contents."""
    found: dict[str, bytes | str] = {}
    for directory, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if Path(directory, d) != dest]
        for name in dirs + files:
            path = Path(directory, name)
            found[str(path)] = path.read_bytes() if path.is_file() else "dir/other"
    return found


@pytest.mark.parametrize("whiteouts", ["apply", "overlay"])
@pytest.mark.parametrize(("case", "layers"), UNSAFE, ids=[case for case, _ in UNSAFE])
def test_malicious_layers_are_refused(
    tmp_path: Path, case: str, layers: list[list[Row]], whiteouts: str
) -> None:
    box = tmp_path / "box"
    dest, outside = box / "dest", box / "outside"
    dest.mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("safe")
    before = tree_outside(tmp_path, dest)
    resolved = [
        [(name, kind, str(payload).format(outside=outside)) for name, kind, payload in rows]
        for rows in layers
    ]
    for rows in resolved[:-1]:
        unpack_rows(rows, dest, whiteouts)
    with pytest.raises(UnsafeArchiveError) as caught:
        unpack_rows(resolved[-1], dest, whiteouts)
    assert repr(resolved[-1][-1][0]) in str(caught.value)  # names the bad entry
    assert tree_outside(tmp_path, dest) == before
    assert not (tmp_path.parent / "evil").exists()


CORRUPT = [
    ("truncated-gzip", gzip.compress(layer_bytes([("a", "file", "a" * 5000)]))[:-40], GZIP),
    ("not-gzip", b"\x1f\x8b\x08\x00garbage" * 10, GZIP),
    ("not-zstd", b"\x28\xb5\x2f\xfd" + b"junk" * 10, OCI_LAYER_ZSTD),
    ("not-a-tar", b"hello world\n" * 100, OCI_LAYER),
]


@pytest.mark.parametrize(
    ("blob", "media_type"), [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT]
)
def test_corrupt_layers_are_input_errors(tmp_path: Path, blob: bytes, media_type: str) -> None:
    with pytest.raises(InputError) as caught:
        unpack_layer(io.BytesIO(blob), media_type, tmp_path)
    assert not isinstance(caught.value, UnsafeArchiveError)
    assert media_type in str(caught.value)


# --- memory --------------------------------------------------------------------------------


def test_big_layer_unpacks_in_flat_memory(tmp_path: Path) -> None:
    (tmp_path / "source").mkdir()
    with open(tmp_path / "source/big", "wb") as handle:
        handle.truncate(300 * 1024 * 1024)
    with open(tmp_path / "layer.tar.gz", "wb") as out:
        blob = write_layer(tmp_path / "source", out, level=1)
    (tmp_path / "dest").mkdir()
    tracemalloc.start()
    try:
        with open(tmp_path / "layer.tar.gz", "rb") as handle:
            diff_id = unpack_layer(handle, OCI_LAYER_GZIP, tmp_path / "dest")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert diff_id == blob.diff_id
    assert (tmp_path / "dest/big").stat().st_size == 300 * 1024 * 1024
    assert peak < 50 * 1024 * 1024
