"""Built layers are stored uncompressed (fast, like dockerd and buildah); registries get them
compressed. Each layer is compressed once and remembered by its digest."""

from __future__ import annotations

import json

from buildgraph.cache.local import LocalStore
from buildgraph.fs import atomic_write
from buildgraph.image import mediatypes as mt
from buildgraph.image.layer import compress_tar
from buildgraph.image.oci import Descriptor, Manifest

COMPRESSIONS = ("gzip", "zstd")  # what a push or an export may choose (--compression)


def compressed_layer(store: LocalStore, layer: Descriptor, compression: str = "gzip") -> Descriptor:
    """`layer` itself when it is compressed already, else its compressed copy in the store."""
    if mt.compression_of(layer.media_type) != "none":
        return layer
    memo = store.root / "compressed" / compression / layer.digest.removeprefix("sha256:")
    try:
        known = Descriptor.from_dict(json.loads(memo.read_bytes()))
        if store.has_blob(known.digest):
            return known
    except (OSError, ValueError):
        pass  # not compressed yet (or an unreadable memo): do it now
    with store.open_blob(layer.digest) as source, store.ingest() as writer:
        blob = compress_tar(source, writer, compression=compression)
    result = Descriptor(blob.media_type, blob.digest, blob.size, layer.annotations)
    atomic_write(memo, json.dumps(result.to_dict()).encode())
    return result


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
