"""Parallel gzip members: reproducible bytes, readable by every gzip reader, stored when random."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import subprocess
from pathlib import Path

import pytest
from zlib_ng import zlib_ng

from buildgraph.image.gzip_members import BLOCK_SIZE, GzipMembers, compress_block
from buildgraph.image.layer import write_layer

GZIP_HEADER_SIZE = 10  # no name, no extra field: the header zlib writes for wbits 31


def mixed(size: int, seed: int = 5) -> bytes:
    """Text and random runs that straddle block boundaries."""
    rnd = random.Random(seed)
    parts, total = [], 0
    while total < size:
        length = rnd.randrange(1000, 700_000)
        part = (
            rnd.randbytes(length) if rnd.random() < 0.5 else b"layer digest %d\n" * (length // 16)
        )
        parts.append(part)
        total += len(part)
    return b"".join(parts)[:size]


def members(stream: bytes) -> list[bytes]:
    """Split a gzip stream into its members (each a complete gzip file)."""
    found = []
    while stream:
        decompressor = zlib_ng.decompressobj(31)
        decompressor.decompress(stream)
        used = len(stream) - len(decompressor.unused_data)
        found.append(stream[:used])
        stream = decompressor.unused_data
    return found


def compressed(data: bytes, threads: int, piece: int = 65_536) -> bytes:
    compressor = GzipMembers(threads=threads)
    out = [compressor.compress(data[i : i + piece]) for i in range(0, len(data), piece)]
    return b"".join(out) + compressor.flush()


def test_the_bytes_do_not_depend_on_threads_or_write_sizes() -> None:
    data = mixed(5 * BLOCK_SIZE + 12345)
    outputs = {
        hashlib.sha256(compressed(data, threads, piece)).hexdigest()
        for threads, piece in ((1, 65_536), (2, 4096), (4, 3 * BLOCK_SIZE), (3, 777))
    }
    assert len(outputs) == 1


def test_python_gzip_and_gzip_t_read_the_members(tmp_path: Path) -> None:
    data = mixed(3 * BLOCK_SIZE + 1)
    stream = compressed(data, threads=2)
    assert len(members(stream)) == 4  # one per MiB: the reader must go past the first
    assert gzip.decompress(stream) == data
    path = tmp_path / "layer.gz"
    path.write_bytes(stream)
    subprocess.run(["gzip", "-t", str(path)], check=True)
    unpacked = subprocess.run(["gzip", "-dc", str(path)], check=True, capture_output=True)
    assert unpacked.stdout == data


def test_random_blocks_are_stored_not_deflated() -> None:
    block = random.Random(1).randbytes(BLOCK_SIZE)
    member = compress_block(block, 6)
    # BTYPE (bits 1-2 of the first deflate byte) 00: a stored block.
    assert member[GZIP_HEADER_SIZE] & 0b110 == 0
    assert len(member) < len(block) * 1.001
    assert gzip.decompress(member) == block


def test_text_blocks_are_deflated() -> None:
    block = (b"RUN pip install -r requirements.txt\n" * 40_000)[:BLOCK_SIZE]
    member = compress_block(block, 3)
    assert len(member) < len(block) // 10
    assert gzip.decompress(member) == block


def test_an_empty_stream_is_one_valid_member() -> None:
    stream = GzipMembers(threads=2).flush()
    assert gzip.decompress(stream) == b""


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_layer_digest_does_not_depend_on_thread_count(tmp_path: Path, compression: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    rnd = random.Random(3)
    for index in range(6):
        (root / f"text{index}").write_bytes(b"hello layer\n" * rnd.randrange(1000, 300_000))
        (root / f"random{index}").write_bytes(rnd.randbytes(rnd.randrange(1000, 900_000)))
    digests = set()
    for threads in (1, 2, 4):
        out = io.BytesIO()
        blob = write_layer(
            root, out, compression=compression, epoch=0, whiteouts="none", threads=threads
        )
        assert blob.digest == "sha256:" + hashlib.sha256(out.getvalue()).hexdigest()
        digests.add(blob.digest)
    assert len(digests) == 1
