"""Layer compression: gzip (zlib-ng, reproducible headers), zstd or none, each way; and
reading an archive whose compression is only known from its first bytes."""

from __future__ import annotations

import bz2
import io
import lzma
from typing import BinaryIO, Protocol

import zstandard
from zlib_ng import gzip_ng

from buildgraph.image.gzip_members import DEFAULT_LEVEL, GzipMembers, default_threads
from buildgraph.image.mediatypes import compression_of

CHUNK = 1 << 20


class Compressor(Protocol):
    def compress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def compressor(compression: str, level: int | None, threads: int | None = None) -> Compressor:
    """`threads` None: as many as this process has cores. The bytes do not depend on it."""
    if compression == "gzip":
        # One gzip member per MiB, compressed on every core; reproducible (gzip_members.py).
        return GzipMembers(DEFAULT_LEVEL if level is None else level, threads)
    if compression == "zstd":
        # zstd's own worker threads. Any worker count >= 1 gives the same bytes (only 0, the
        # single-threaded mode, differs), so the digest does not depend on the machine's cores.
        params = zstandard.ZstdCompressionParameters.from_level(
            3 if level is None else level, threads=threads or default_threads()
        )
        return zstandard.ZstdCompressor(compression_params=params).compressobj()
    return _Identity()


def open_layer(blob: BinaryIO, media_type: str) -> BinaryIO:
    """A readable stream of the uncompressed tar inside a layer blob."""
    match compression_of(media_type):
        case "gzip":
            return gzip_ng.GzipNGFile(fileobj=blob, mode="rb")
        case "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True)
            return io.BufferedReader(reader, CHUNK)
        case _:
            return blob


_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
)


def decompressed(source: BinaryIO) -> BinaryIO:
    """Decompress `source` (gzip, zstd, bzip2, xz or none), sniffing the compression from the
    magic bytes without needing a seekable source."""
    head = _read_exactly(source, 6)
    stream = io.BufferedReader(_Prefixed(head, source), CHUNK)
    kind = next((kind for magic, kind in _MAGIC if head.startswith(magic)), "none")
    match kind:
        case "gzip":
            return gzip_ng.GzipNGFile(fileobj=stream, mode="rb")
        case "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
            return io.BufferedReader(reader, CHUNK)
        case "bzip2":
            return bz2.BZ2File(stream)  # type: ignore[return-value]
        case "xz":
            return lzma.LZMAFile(stream)  # type: ignore[return-value]
        case _:
            return stream


def _read_exactly(source: BinaryIO, count: int) -> bytes:
    data = b""
    while len(data) < count and (chunk := source.read(count - len(data))):
        data += chunk
    return data


class _Prefixed(io.RawIOBase):
    """`prefix` followed by the rest of `source`: puts sniffed bytes back in front."""

    def __init__(self, prefix: bytes, source: BinaryIO) -> None:
        self._prefix = prefix
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._prefix:
            count = min(len(buffer), len(self._prefix))
            buffer[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
