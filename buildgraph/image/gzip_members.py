"""Parallel gzip: a stream cut into fixed-size blocks, each block one gzip member.

Concatenated members are one valid gzip file (RFC 1952 2.2; Python's gzip, `gzip -d`, Go's
compress/gzip as used by containerd and BuildKit all read them). Each block is compressed on its
own, so blocks go to a thread pool (zlib-ng releases the GIL while it deflates) and come back in
order. Block boundaries sit at fixed offsets of the input and a block's member depends on its
bytes alone: the output is the same whatever the thread count or timing, so layer digests stay
reproducible.

A block whose samples do not compress (random data, media, already compressed files) is written
as a stored member (deflate level 0): deflating it would burn CPU to make it larger.
"""

from __future__ import annotations

import os
from collections import deque
from typing import TYPE_CHECKING

from zlib_ng import zlib_ng

if TYPE_CHECKING:  # concurrent.futures costs every command ~8 ms: imported where a pool starts
    from concurrent.futures import Future

# 1 MiB: the 32 KiB window restarts once per MiB (a size cost under 0.5%), and a block is large
# enough that thread hand-off costs nothing next to deflating it.
BLOCK_SIZE = 1 << 20
# zlib-ng level 3: on source code 2.3x the speed of level 6 for 7% more bytes; level 2 costs 16%
# and level 1 35% more (README "Layer compression" has the figures and the command).
DEFAULT_LEVEL = 3
_SAMPLES = 8  # probes spread over a block
_SAMPLE_SIZE = 4096
_INCOMPRESSIBLE = 0.95  # a sample that keeps more than this of its size did not compress


def default_threads() -> int:
    """The cores this process may use (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def compress_block(block: bytes, level: int) -> bytes:
    """One gzip member holding `block`: stored when it does not compress, else deflated."""
    if level == 0 or _incompressible(block):
        return zlib_ng.compress(block, 0, wbits=31)
    member = zlib_ng.compress(block, level, wbits=31)
    if len(member) >= len(block):  # mixed data the samples missed: stored is smaller
        return zlib_ng.compress(block, 0, wbits=31)
    return member


def _incompressible(block: bytes) -> bool:
    """Whether every sample of the block stays near its size under level 1 (cheap: 32 KiB of
    probing per MiB). Only the block's bytes decide, never timing."""
    if len(block) < _SAMPLES * _SAMPLE_SIZE:
        return False
    stride = (len(block) - _SAMPLE_SIZE) // (_SAMPLES - 1)
    view = memoryview(block)
    for index in range(_SAMPLES):
        start = index * stride
        sample = view[start : start + _SAMPLE_SIZE]
        if len(zlib_ng.compress(sample, 1, wbits=-15)) < _INCOMPRESSIBLE * _SAMPLE_SIZE:
            return False
    return True


class GzipMembers:
    """A compressor object (compress/flush, like zlib's) that hands blocks to `threads` workers
    and returns finished members in input order. At most 2 x threads blocks are in flight, so
    memory stays flat whatever the stream's size."""

    def __init__(self, level: int = DEFAULT_LEVEL, threads: int | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._level = level
        self._threads = threads or default_threads()
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="gzip")
        self._pending: deque[Future[bytes]] = deque()
        self._buffer = bytearray()
        self._started = False

    def compress(self, data: bytes) -> bytes:
        self._started = True
        self._buffer += data
        done: list[bytes] = []
        while len(self._buffer) >= BLOCK_SIZE:
            block = bytes(self._buffer[:BLOCK_SIZE])
            del self._buffer[:BLOCK_SIZE]
            self._submit(block, done)
        return b"".join(done)

    def flush(self) -> bytes:
        """The rest of the stream; the pool is shut down afterwards."""
        done: list[bytes] = []
        try:
            if self._buffer or not self._started:  # an empty stream is still one member
                self._submit(bytes(self._buffer), done)
                self._buffer.clear()
            while self._pending:
                done.append(self._pending.popleft().result())
        finally:
            self.close()
        return b"".join(done)

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)

    def _submit(self, block: bytes, done: list[bytes]) -> None:
        self._pending.append(self._pool.submit(compress_block, block, self._level))
        while len(self._pending) > 2 * self._threads:
            done.append(self._pending.popleft().result())
        while self._pending and self._pending[0].done():
            done.append(self._pending.popleft().result())
