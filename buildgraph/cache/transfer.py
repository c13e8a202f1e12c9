"""Pull images from a registry into the local store, push stored images to a registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from buildgraph.cache.local import LocalStore, StoredImage
from buildgraph.errors import CacheError, InputError
from buildgraph.cache.compress import COMPRESSIONS, known_compressed
from buildgraph.image.oci import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    as_docker_manifest,
    parse_document,
)
from buildgraph.registry.client import RegistryClient
from buildgraph.registry.reference import Reference, parse_reference
from buildgraph.cache.stream_push import push_compressing

Progress = Callable[[str], None]
Fetch = Callable[[Descriptor], None]  # puts a blob the store lacks into the store


def _quiet(_: str) -> None:
    pass


def pull(
    client: RegistryClient,
    store: LocalStore,
    ref: Reference,
    *,
    platform: Platform,
    jobs: int = 4,
    progress: Progress = _quiet,
) -> StoredImage:
    """Fetch `ref` for `platform` into the store and tag it; the tag is written last,
    so an interrupted pull leaves no name pointing at a missing blob."""
    response = client.get_manifest(ref)
    document = parse_document(response.data, response.media_type)
    if isinstance(document, Index):
        chosen = document.select(platform)
        response = client.get_manifest(ref.with_digest(chosen.digest))
        document = parse_document(response.data, response.media_type)
        if not isinstance(document, Manifest):
            raise InputError(f"{ref}: nested image indexes are not supported")
    manifest: Manifest = document
    missing = [b for b in (manifest.config, *manifest.layers) if not store.has_blob(b.digest)]
    _fetch_all(client, store, ref, missing, jobs, progress)
    descriptor = store.put_blob(response.data, response.media_type)
    return store.tag(ref.familiar, str(ref), descriptor)


def _fetch_all(
    client: RegistryClient,
    store: LocalStore,
    ref: Reference,
    blobs: list[Descriptor],
    jobs: int,
    progress: Progress,
) -> None:
    def fetch(blob: Descriptor) -> None:
        if store.has_blob(blob.digest):  # another process may have fetched it meanwhile
            return
        store.put_verified(blob.digest, lambda out: client.fetch_blob(ref, blob.digest, out))
        progress(f"fetched {blob.digest[:19]} ({blob.size} bytes)")

    unique = list({blob.digest: blob for blob in blobs}.values())
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(fetch, blob) for blob in unique]:
            future.result()


def push(
    client: RegistryClient,
    store: LocalStore,
    image: StoredImage,
    ref: Reference,
    *,
    jobs: int = 4,
    progress: Progress = _quiet,
    manifest_format: str = "oci",
    mount_from: Sequence[Reference] = (),
    fetch: Fetch | None = None,
    compression: str = "gzip",
) -> str:
    """Upload the image's blobs (mounting them where the registry already has them),
    then its manifest under `ref`; returns the manifest digest. Layers stored uncompressed
    are sent compressed with `compression` (gzip or zstd; once: the compressed copy is kept).
    A layer never compressed before is compressed while it is uploaded (stream_push.py), each in
    its own task.

    The image may lack layer blobs in the store (one assembled from a remote cache's records):
    those are mounted from a `mount_from` repository of the same registry as they are; one that
    the registry will not mount is put into the store with `fetch`, then uploaded."""
    if compression not in COMPRESSIONS:
        raise InputError(f"unknown compression {compression!r} (gzip or zstd)")
    if manifest_format == "docker" and compression != "gzip":
        raise InputError(f"--format docker: Docker schema2 has no {compression} layers; use oci")
    stored = store.read_manifest(image.descriptor)
    sources = _mount_sources(image, ref, mount_from)

    def upload(blob: Descriptor) -> None:
        if client.blob_exists(ref, blob.digest, pushing=True):
            return
        for source in sources:
            if client.mount_blob(ref, blob.digest, source):
                progress(f"mounted {blob.digest[:19]} from {source.repository}")
                return
        if not store.has_blob(blob.digest):
            if fetch is None:
                raise CacheError(f"cannot push {ref}: blob {blob.digest} is not in the store")
            fetch(blob)  # a mount was refused: the bytes have to come through here after all
        with store.open_blob(blob.digest) as handle:
            client.upload_blob(ref, blob.digest, blob.size, handle)
        progress(f"pushed {blob.digest[:19]} ({blob.size} bytes)")

    def send_layer(layer: Descriptor) -> Descriptor:
        if not store.has_blob(layer.digest):  # remote cache only: mounted as it is
            upload(layer)
            return layer
        ready = known_compressed(store, layer, compression)
        if ready is None:  # never compressed: compress and upload at once
            streamed = push_compressing(client, store, ref, layer, compression)
            if streamed.uploaded:
                progress(f"pushed {streamed.blob.digest[:19]} ({streamed.blob.size} bytes)")
                return streamed.blob
            ready = streamed.blob
        upload(ready)
        return ready

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        config = pool.submit(upload, stored.config)
        unique = {layer.digest: pool.submit(send_layer, layer) for layer in stored.layers}
        layers = tuple(unique[layer.digest].result() for layer in stored.layers)
        config.result()
    manifest = stored
    if layers != stored.layers:
        manifest = Manifest(stored.config, layers, stored.media_type, stored.annotations)
    if manifest_format == "docker":
        manifest = as_docker_manifest(manifest)
    if manifest == stored:
        data, media_type = store.read_blob(image.descriptor.digest), image.descriptor.media_type
    else:
        data, media_type = manifest.to_json(), manifest.media_type
    return client.put_manifest(ref, data, media_type)


def _mount_sources(
    image: StoredImage, ref: Reference, mount_from: Sequence[Reference]
) -> list[Reference]:
    """Where blobs may be mounted from: the repository the image came from, then `mount_from`;
    only those on `ref`'s registry and other than `ref`'s repository."""
    try:
        origin = [parse_reference(image.full_name)]
    except InputError:
        origin = []
    found: dict[str, Reference] = {}
    for source in (*origin, *mount_from):
        if source.registry == ref.registry and source.repository != ref.repository:
            found.setdefault(source.repository, source.repository_only())
    return list(found.values())
