"""Compress a layer and upload it at the same time: compressed chunks go to the store and,
through a bounded pipe, into the request body, so the upload ends soon after the compression
instead of starting after it."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from buildgraph.cache.local import LocalStore
from buildgraph.errors import RegistryError
from buildgraph.cache.compress import compressed_layer
from buildgraph.image.oci import Descriptor
from buildgraph.registry.client import RegistryClient
from buildgraph.registry.reference import Reference

PIPE_CHUNKS = 8  # compressed chunks (about a MiB each) between the compressor and the socket
_POLL = 0.1  # seconds between checks whether the other side gave up


@dataclass(frozen=True, slots=True)
class Streamed:
    blob: Descriptor  # the compressed layer, now in the store
    uploaded: bool  # False: the stream failed; upload `blob` from the store instead


def push_compressing(
    client: RegistryClient, store: LocalStore, ref: Reference, layer: Descriptor, compression: str
) -> Streamed:
    """Compress `layer` (stored uncompressed, never compressed before) into the store while
    uploading the same bytes to `ref`. When the upload fails the compression still finishes, and
    the caller uploads the stored copy the ordinary way (with retries)."""
    pipe = _Pipe()
    outcome: dict[str, object] = {}

    def produce() -> None:
        try:
            outcome["blob"] = compressed_layer(store, layer, compression, also=pipe.put)
        except BaseException as err:  # re-raised in the caller's thread
            outcome["error"] = err
        finally:
            pipe.close()

    def digest() -> str:  # asked once the chunks ended, i.e. after produce() finished
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["blob"].digest  # type: ignore[attr-defined]

    thread = threading.Thread(target=produce, name=f"compress-{layer.digest[7:19]}", daemon=True)
    thread.start()
    uploaded = False
    try:
        client.upload_blob_stream(ref, pipe.chunks(), digest)
        uploaded = True
    except RegistryError:
        pass  # the bytes are (being) stored: the caller uploads them with retries
    finally:
        pipe.abandon()  # a producer blocked on a full pipe carries on into the store alone
        thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return Streamed(outcome["blob"], uploaded)  # type: ignore[arg-type]


class _Pipe:
    """A bounded queue of chunks that neither side can block forever once the other gives up."""

    _END = b""

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes] = queue.Queue(PIPE_CHUNKS)
        self._abandoned = threading.Event()

    def put(self, chunk: bytes) -> None:
        if chunk:
            self._offer(chunk)

    def close(self) -> None:
        self._offer(self._END)

    def chunks(self) -> Iterator[bytes]:
        while True:
            chunk = self._queue.get()
            if chunk is self._END or not chunk:
                return
            yield chunk

    def abandon(self) -> None:
        self._abandoned.set()
        while True:  # unblock a producer waiting for room
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _offer(self, chunk: bytes) -> None:
        while not self._abandoned.is_set():
            try:
                self._queue.put(chunk, timeout=_POLL)
                return
            except queue.Full:
                continue
