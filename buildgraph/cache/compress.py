"""Built layers are stored uncompressed (fast, like dockerd and buildah); registries get them
compressed. Each layer is compressed once and remembered by its digest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from buildgraph.cache.local import LocalStore
from buildgraph.fs import atomic_write
from buildgraph.image import mediatypes as mt
from buildgraph.image.layer import compress_tar
from buildgraph.image.oci import Descriptor, Manifest

COMPRESSIONS = ("gzip", "zstd")  # what a push or an export may choose (--compression)


def known_compressed(store: LocalStore, layer: Descriptor, compression: str) -> Descriptor | None:
    """`layer` itself when it is compressed already, its remembered compressed copy, or None
    when it has not been compressed with `compression` yet."""
    if mt.compression_of(layer.media_type) != "none":
        return layer
    try:
        known = Descriptor.from_dict(json.loads(_memo(store, layer, compression).read_bytes()))
        if store.has_blob(known.digest):
            return known
    except (OSError, ValueError):
        pass  # not compressed yet (or an unreadable memo)
    return None


def compressed_layer(
    store: LocalStore,
    layer: Descriptor,
    compression: str = "gzip",
    also: Callable[[bytes], None] | None = None,
) -> Descriptor:
    """`layer` itself when it is compressed already, else its compressed copy in the store.
    `also` sees every compressed chunk as it is written (a streamed upload reads them)."""
    known = known_compressed(store, layer, compression)
    if known is not None:
        return known
    with store.open_blob(layer.digest) as source, store.ingest() as writer:
        out = writer if also is None else _Tee(writer, also)
        blob = compress_tar(source, out, compression=compression)  # type: ignore[arg-type]
    result = Descriptor(blob.media_type, blob.digest, blob.size, layer.annotations)
    atomic_write(_memo(store, layer, compression), json.dumps(result.to_dict()).encode())
    return result


def _memo(store: LocalStore, layer: Descriptor, compression: str) -> Path:
    return store.root / "compressed" / compression / layer.digest.removeprefix("sha256:")


class _Tee:
    def __init__(self, out: BinaryIO, also: Callable[[bytes], None]) -> None:
        self._out = out
        self._also = also

    def write(self, data: bytes) -> int:
        written = self._out.write(data)
        self._also(bytes(data))
        return written


def for_registry(store: LocalStore, manifest: Manifest, compression: str = "gzip") -> Manifest:
    """The manifest with every uncompressed layer swapped for its compressed copy. A layer the
    store lacks (taken from a remote cache, never downloaded) stays as it is: without its bytes
    it cannot be compressed, only mounted from where it is."""
    layers = tuple(
        compressed_layer(store, layer, compression) if store.has_blob(layer.digest) else layer
        for layer in manifest.layers
    )
    if layers == manifest.layers:
        return manifest
    return Manifest(manifest.config, layers, manifest.media_type, manifest.annotations)
