"""`image import`, `images`, `image export`, `image rm`, `pull`, `push`: local store commands."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from buildgraph.cache.export import (
    export_docker_archive,
    export_local,
    export_oci,
    output_compression,
    parse_output,
)
from buildgraph.cache.local import LocalStore, StoredImage
from buildgraph.errors import InputError, NotFound
from buildgraph.image.config import HistoryEntry, ImageConfig
from buildgraph.image.layer import layer_from_tar, write_layer
from buildgraph.image.oci import Descriptor, Platform
from buildgraph.registry.reference import Reference, parse_reference

if TYPE_CHECKING:  # the client pulls in requests (60 ms): a local build never needs it
    from buildgraph.registry.client import RegistryClient


def build_timestamp() -> tuple[str, int | None]:
    """RFC 3339 creation time and the SOURCE_DATE_EPOCH clamp, if that is set."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if raw:
        try:
            epoch = int(raw)
        except ValueError as err:
            raise InputError(f"SOURCE_DATE_EPOCH must be an integer, not {raw!r}") from err
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)), epoch
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), None


def import_rootfs(
    store: LocalStore,
    source: Path,
    name: Reference,
    *,
    platform: Platform,
    compression: str = "gzip",
) -> StoredImage:
    """`docker import`: one layer made of a root filesystem tarball or directory."""
    created, epoch = build_timestamp()
    store.ensure()
    if source.is_dir():
        with store.ingest() as writer:
            blob = write_layer(
                source, writer, compression=compression, epoch=epoch, whiteouts="none"
            )
    elif source.is_file():
        with open(source, "rb") as tarball, store.ingest() as writer:
            blob = layer_from_tar(tarball, writer, compression=compression, epoch=epoch)
    else:
        raise InputError(f"no such file or directory: {source}")
    layer = Descriptor(blob.media_type, blob.digest, blob.size)
    history = HistoryEntry(
        created=created,
        created_by=f"buildgraph image import {source.name}",
        comment="imported from a root filesystem",
    )
    config = ImageConfig(platform=platform, created=created).with_layer(blob.diff_id, history)
    image = store.tag(name.familiar, str(name), store.put_image(config, (layer,)))
    unpack_image(store, image)
    return image


def unpack_image(store: LocalStore, image: StoredImage) -> None:
    """Unpack the image's layers into snapshots now, as `docker load`/`pull` and buildah do,
    so that the first build from it does not (each layer is unpacked once, ever)."""
    from buildgraph.worker.snapshot import SnapshotStore

    manifest = store.read_manifest(image.descriptor)
    diff_ids = store.read_config(manifest).diff_ids
    snapshots = SnapshotStore(store.root / "snapshots")
    for layer, diff_id in zip(manifest.layers, diff_ids, strict=True):
        snapshots.ensure(store, layer, diff_id)


def find_image(store: LocalStore, text: str) -> StoredImage:
    name = parse_reference(text)
    image = store.resolve(name.familiar) or store.resolve(str(name)) or store.resolve(text)
    if image is None:
        raise NotFound(f"no image {text!r} in the local store {store.root}")
    return image


def export_image(store: LocalStore, text: str, spec_text: str) -> str:
    image = find_image(store, text)
    spec = parse_output(spec_text)
    dest = Path(spec.dest)
    compression = output_compression(spec)
    if spec.type == "oci":
        export_oci(store, image, dest, spec.attr("name", image.name), compression)
    elif spec.type == "docker":
        names = [spec.attr("name")] if spec.attr("name") else [image.name]
        export_docker_archive(store, image, dest, names)
    elif spec.type == "local":
        export_local(store, image, dest)
    else:
        raise InputError(f"image export: output type {spec.type} is not an export target")
    return str(dest)


def pull_image(
    client: RegistryClient,
    store: LocalStore,
    text: str,
    *,
    platform: Platform,
    progress: Callable[[str], None],
) -> StoredImage:
    from buildgraph.cache.transfer import pull

    ref = parse_reference(text)
    image = pull(client, store.ensure(), ref, platform=platform, progress=progress)
    unpack_image(store, image)
    return image


def push_image(
    client: RegistryClient,
    store: LocalStore,
    source: str,
    destination: str | None,
    *,
    progress: Callable[[str], None],
    manifest_format: str = "oci",
    compression: str = "gzip",
) -> tuple[Reference, str]:
    image = find_image(store, source)
    ref = parse_reference(destination or image.full_name)
    from buildgraph.cache.transfer import push

    digest = push(
        client,
        store,
        image,
        ref,
        progress=progress,
        manifest_format=manifest_format,
        compression=compression,
    )
    return ref, digest
