"""push of an image whose layers are not all in the local store: mounted, else fetched first."""

from __future__ import annotations

from pathlib import Path

import pytest
from registry_helpers import Blob, push_blob, unique_repo
from registry_server import RegistryServer

from buildgraph.cache.local import LocalStore, StoredImage
from buildgraph.cache.transfer import push
from buildgraph.errors import CacheError
from buildgraph.image import mediatypes as mt
from buildgraph.image.oci import Descriptor, Manifest
from buildgraph.registry.client import RegistryClient

CONFIG = Blob(b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}')
HERE = Blob(b"a layer the store has")  # typed as gzip: sent as it is, nothing to compress
IN_CACHE = Blob(b"a layer only the cache repository has")
NOWHERE = Blob(b"a layer no repository on this registry has")


def stored_image(store: LocalStore, name: str) -> StoredImage:
    store.ensure()
    config = store.put_blob(CONFIG.data, mt.OCI_CONFIG)
    here = store.put_blob(HERE.data, mt.OCI_LAYER_GZIP)
    absent = [Descriptor(mt.OCI_LAYER, blob.digest, blob.size) for blob in (IN_CACHE, NOWHERE)]
    manifest = store.put_blob(Manifest(config, (here, *absent)).to_json(), mt.OCI_MANIFEST)
    return StoredImage(name, name, manifest)


def test_missing_layers_are_mounted_and_a_refused_one_is_fetched_then_uploaded(
    client: RegistryClient, registry: RegistryServer, tmp_path: Path
) -> None:
    cache, target = unique_repo(registry, "cache"), unique_repo(registry, "app")
    push_blob(client, cache, IN_CACHE)
    store = LocalStore(tmp_path / "store")
    image = stored_image(store, "app:1")
    fetched: list[str] = []

    def fetch(blob: Descriptor) -> None:
        fetched.append(blob.digest)
        store.put_blob(NOWHERE.data, blob.media_type)

    messages: list[str] = []
    ref = target.with_tag("1")
    digest = push(
        client, store, image, ref, mount_from=(cache,), fetch=fetch, progress=messages.append
    )

    assert fetched == [NOWHERE.digest]  # the mount of it was refused (202): fetched, uploaded
    assert not store.has_blob(IN_CACHE.digest)  # mounted: its bytes never came here
    assert f"mounted {IN_CACHE.digest[:19]} from {cache.repository}" in messages
    pulled = client.get_manifest(ref)
    assert pulled.digest == digest == image.descriptor.digest  # pushed as stored: no layer changed
    for blob in (HERE, IN_CACHE, NOWHERE):
        assert client.blob_exists(target, blob.digest)


def test_a_missing_layer_nobody_lends_without_a_fetch_is_an_error(
    client: RegistryClient, registry: RegistryServer, tmp_path: Path
) -> None:
    cache, target = unique_repo(registry, "cache"), unique_repo(registry, "app")
    push_blob(client, cache, IN_CACHE)
    store = LocalStore(tmp_path / "store")
    with pytest.raises(CacheError, match=NOWHERE.digest):
        push(client, store, stored_image(store, "app:1"), target.with_tag("1"), mount_from=(cache,))
