"""Write the archives of the add-tar* cases. Run once by hand; the archives are committed.

cd tests && python -m conformance.make_archives
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile

from conformance.cases import CASES_DIR

MTIME = 1_700_000_000  # fixed, so re-running the script changes no committed byte
COMPRESSORS = {
    "tar": lambda data: data,
    "tar.gz": lambda data: gzip.compress(data, mtime=0),
    "tar.bz2": bz2.compress,
    "tar.xz": lzma.compress,
}


def archive_bytes() -> bytes:
    """top/ with a file owned 1000:1000, its hardlink, a symlink, a setuid file, an empty dir."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "top", tarfile.DIRTYPE, 0o755)
        _add(tar, "top/file.txt", tarfile.REGTYPE, 0o640, b"from archive\n", uid=1000)
        _add(tar, "top/hard", tarfile.LNKTYPE, 0o640, link="top/file.txt", uid=1000)
        _add(tar, "top/exec.sh", tarfile.REGTYPE, 0o755, b"#!/bin/sh\necho hi\n")
        _add(tar, "top/setuid", tarfile.REGTYPE, 0o4755, b"suid\n")
        _add(tar, "top/link", tarfile.SYMTYPE, 0o777, link="file.txt")
        _add(tar, "top/empty", tarfile.DIRTYPE, 0o700)
    return buffer.getvalue()


def links_archive_bytes() -> bytes:
    """Entries that pass through symlinks the tar itself makes: relative, absolute (from the
    destination, as BuildKit's chrootarchive sees "/"), and with a '..' that stays inside."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ("usr", "usr/lib", "usr/share"):
            _add(tar, name, tarfile.DIRTYPE, 0o755)
        _add(tar, "lib", tarfile.SYMTYPE, 0o777, link="usr/lib")
        _add(tar, "lib/libx.so", tarfile.REGTYPE, 0o644, b"libx\n")
        _add(tar, "abs", tarfile.SYMTYPE, 0o777, link="/usr/share")
        _add(tar, "abs/doc.txt", tarfile.REGTYPE, 0o644, b"doc\n")
        _add(tar, "up", tarfile.SYMTYPE, 0o777, link="usr/lib/../share")
        _add(tar, "up/up.txt", tarfile.REGTYPE, 0o644, b"up\n")
    return buffer.getvalue()


def through_image_archive_bytes() -> bytes:
    """One entry below `link`, a symlink the image (not the tar) has."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "link/through-image.txt", tarfile.REGTYPE, 0o644, b"image link\n")
    return buffer.getvalue()


def _add(
    tar: tarfile.TarFile,
    name: str,
    kind: bytes,
    mode: int,
    data: bytes = b"",
    *,
    link: str = "",
    uid: int = 0,
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, MTIME, link
    info.uid = info.gid = uid
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if info.size else None)


def main() -> None:
    links = CASES_DIR / "add-tar-through-links"
    (links / "links.tar").write_bytes(links_archive_bytes())
    (links / "through-image.tar").write_bytes(through_image_archive_bytes())
    data = archive_bytes()
    for suffix, compress in COMPRESSORS.items():
        case_dir = CASES_DIR / ("add-" + suffix.replace(".", "-"))
        (case_dir / f"archive.{suffix}").write_bytes(compress(data))
        print(case_dir / f"archive.{suffix}")


if __name__ == "__main__":
    main()
