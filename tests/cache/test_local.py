from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from buildgraph.cache.local import REF_NAME, LocalStore
from buildgraph.errors import CacheError, DigestMismatch
from buildgraph.image import mediatypes as mt
from buildgraph.image.config import ImageConfig


def test_ensure_makes_an_oci_layout(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "cache").ensure()
    assert json.loads((store.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads(store.index_path.read_text())["manifests"] == []


def test_ingest_with_wrong_digest_stores_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path).ensure()
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DigestMismatch), store.ingest(wrong) as writer:
        writer.write(b"hello")
    assert not list((tmp_path / "blobs" / "sha256").iterdir())
    assert not list((tmp_path / "ingest").iterdir())


def test_interrupted_ingest_stores_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path).ensure()
    with pytest.raises(KeyboardInterrupt), store.ingest() as writer:
        writer.write(b"partial")
        raise KeyboardInterrupt
    assert not list((tmp_path / "blobs" / "sha256").iterdir())
    assert not list((tmp_path / "ingest").iterdir())


def test_corrupt_blob_is_reported(tmp_path: Path) -> None:
    store = LocalStore(tmp_path).ensure()
    descriptor = store.put_blob(b'{"a": 1}', mt.OCI_CONFIG)
    path = store.blob_path(descriptor.digest)
    os.chmod(path, 0o644)
    path.write_bytes(b'{"a": 2}')
    with pytest.raises(CacheError, match="corrupt blob"):
        store.read_blob(descriptor.digest)
    with pytest.raises(CacheError, match="corrupt blob"):
        store.verify_blob(descriptor.digest)


def test_corrupt_index_names_the_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path).ensure()
    store.index_path.write_text("{ not json")
    with pytest.raises(CacheError) as caught:
        store.images()
    assert str(caught.value).startswith(f"{store.index_path}: corrupt index")


def test_tag_replaces_and_untag_removes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path).ensure()
    first = store.put_image(ImageConfig(), ())
    second = store.put_image(ImageConfig(author="x"), ())
    store.tag("a:latest", "docker.io/library/a:latest", first)
    store.tag("a:latest", "docker.io/library/a:latest", second)
    assert [image.descriptor.digest for image in store.images()] == [second.digest]
    assert store.resolve("docker.io/library/a:latest").name == "a:latest"
    entry = json.loads(store.index_path.read_text())["manifests"][0]
    assert entry["annotations"][REF_NAME] == "a:latest"
    assert store.untag("a:latest")
    assert store.resolve("a:latest") is None


def test_tagging_the_same_image_again_writes_nothing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path).ensure()
    image = store.put_image(ImageConfig(), ())
    store.tag("a:latest", "docker.io/library/a:latest", image)
    before = store.index_path.stat().st_mtime_ns
    again = store.tag("a:latest", "docker.io/library/a:latest", image)
    assert store.index_path.stat().st_mtime_ns == before  # a rebuild costs no index write
    assert again.descriptor.digest == image.digest
    other = store.put_image(ImageConfig(author="x"), ())
    store.tag("a:latest", "docker.io/library/a:latest", other)
    assert [i.descriptor.digest for i in store.images()] == [other.digest]


def test_tagging_a_missing_manifest_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path).ensure()
    descriptor = store.put_image(ImageConfig(), ())
    store.blob_path(descriptor.digest).unlink()
    with pytest.raises(CacheError, match="not stored"):
        store.tag("a:latest", "a:latest", descriptor)


def _tag_many(root: str, worker: int, count: int) -> None:
    store = LocalStore(Path(root)).ensure()
    for number in range(count):
        descriptor = store.put_image(ImageConfig(author=f"{worker}-{number}"), ())
        store.tag(f"img{worker}-{number}:latest", f"img{worker}-{number}:latest", descriptor)


def test_concurrent_processes_lose_no_tag(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_tag_many, args=(str(tmp_path), worker, 25)) for worker in range(4)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    store = LocalStore(tmp_path)
    assert len(store.images()) == 100
    for image in store.images():
        store.read_manifest(image.descriptor)  # every tagged manifest is complete
