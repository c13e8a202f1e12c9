"""The local image store: an OCI image layout on disk (blobs, index.json) shared by processes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from buildgraph.errors import CacheError, DigestMismatch, InputError, Location
from buildgraph.fs import atomic_write, file_lock
from buildgraph.image import mediatypes as mt
from buildgraph.image.config import ImageConfig
from buildgraph.image.oci import Descriptor, Index, Manifest, canonical_json, parse_document

REF_NAME = "org.opencontainers.image.ref.name"  # what `skopeo inspect oci:DIR:NAME` matches
FULL_NAME = "io.containerd.image.name"  # the canonical name, as containerd records it
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
COPY_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class StoredImage:
    name: str  # the familiar name it is tagged with, e.g. "busybox:latest"
    full_name: str  # "docker.io/library/busybox:latest"
    descriptor: Descriptor  # the manifest


class BlobWriter:
    """A file being written into the store; hashed as it is written, unless the writer hashes
    it itself and says so (`unhashed` + `declare`: a layer tar is hashed once, not twice)."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._hash = hashlib.sha256()
        self._declared = ""
        self.size = 0
        self.digest = ""

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        return self._handle.write(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self._handle.flush()

    @property
    def unhashed(self) -> BinaryIO:
        """The file itself, for a writer that computes the digest of what it writes."""
        return self._handle

    def declare(self, digest: str, size: int) -> None:
        """The digest and size of everything written through `unhashed`."""
        self._declared, self.size = digest.removeprefix("sha256:"), size

    def hexdigest(self) -> str:
        return self._declared or self._hash.hexdigest()


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    # -- layout ---------------------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def ensure(self) -> LocalStore:
        """Create the layout if missing (idempotent, safe under concurrency)."""
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "ingest").mkdir(exist_ok=True)
        if not (self.root / "oci-layout").exists():
            atomic_write(self.root / "oci-layout", OCI_LAYOUT)
        with self._index_lock():
            if not self.index_path.exists():
                atomic_write(self.index_path, Index(()).to_json())
        return self

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        with file_lock(self.root / ".index.lock"):
            yield

    # -- blobs ----------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        if not DIGEST_PATTERN.match(digest):
            raise InputError(f"unsupported or malformed digest {digest!r}")
        return self.root / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    @contextlib.contextmanager
    def ingest(self, expected: str | None = None) -> Iterator[BlobWriter]:
        """Write a blob; it appears under its digest only if the block finishes and,
        when `expected` is given, the content matches it. Nothing half-written stays."""
        self.ensure()
        fd, tmp_name = tempfile.mkstemp(prefix="blob-", dir=self.root / "ingest")
        try:
            with os.fdopen(fd, "wb") as handle:
                writer = BlobWriter(handle)
                yield writer
                handle.flush()
                os.fsync(handle.fileno())
            digest = "sha256:" + writer.hexdigest()
            if expected and digest != expected:
                raise DigestMismatch(f"content of {expected} has digest {digest}")
            os.chmod(tmp_name, 0o644)
            os.replace(tmp_name, self.blob_path(digest))
            writer.digest = digest
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise

    def put_verified(self, digest: str, fetch: Callable[[BinaryIO], int]) -> int:
        """Store the blob `digest` that `fetch` writes into the file it is given and checks
        itself (raising on a mismatch, so nothing is stored); returns its size. Hashed once,
        by `fetch`, not a second time here."""
        with self.ingest(digest) as writer:
            size = fetch(writer.unhashed)
            writer.declare(digest, size)
        return size

    def put_blob(self, data: bytes, media_type: str) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has_blob(digest):
            with self.ingest(digest) as writer:
                writer.write(data)
        return Descriptor(media_type, digest, len(data))

    def put_file(self, source: BinaryIO, media_type: str) -> Descriptor:
        with self.ingest() as writer:
            while chunk := source.read(COPY_CHUNK):
                writer.write(chunk)
        return Descriptor(media_type, writer.digest, writer.size)

    def open_blob(self, digest: str) -> BinaryIO:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError as err:
            raise CacheError(f"blob {digest} missing from {self.root}") from err

    def read_blob(self, digest: str) -> bytes:
        """A small blob (manifest, config), verified against its digest."""
        with self.open_blob(digest) as handle:
            data = handle.read()
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise CacheError(f"corrupt blob {digest} in {self.root} (content does not match)")
        return data

    def verify_blob(self, digest: str) -> None:
        hasher = hashlib.sha256()
        with self.open_blob(digest) as handle:
            while chunk := handle.read(COPY_CHUNK):
                hasher.update(chunk)
        if "sha256:" + hasher.hexdigest() != digest:
            raise CacheError(f"corrupt blob {digest} in {self.root} (content does not match)")

    # -- manifests and configs --------------------------------------------------------------
    def read_manifest(self, descriptor: Descriptor) -> Manifest:
        document = self._parse(descriptor.digest, descriptor.media_type)
        if not isinstance(document, Manifest):
            raise CacheError(f"{descriptor.digest} in {self.root} is an index, not a manifest")
        return document

    def read_document(self, descriptor: Descriptor) -> Manifest | Index:
        return self._parse(descriptor.digest, descriptor.media_type)

    def _parse(self, digest: str, media_type: str) -> Manifest | Index:
        data = self.read_blob(digest)
        try:
            return parse_document(data, media_type)
        except InputError as err:
            raise CacheError(f"corrupt manifest {digest} in {self.root}: {err}") from err

    def read_config(self, manifest: Manifest) -> ImageConfig:
        try:
            return ImageConfig.from_json(self.read_blob(manifest.config.digest))
        except InputError as err:
            raise CacheError(f"corrupt image config {manifest.config.digest}: {err}") from err

    def put_image(self, config: ImageConfig, layers: tuple[Descriptor, ...]) -> Descriptor:
        """Store a config and its manifest (layers must be stored already)."""
        config_descriptor = self.put_blob(config.to_json(), mt.OCI_CONFIG)
        manifest = Manifest(config_descriptor, layers)
        return self.put_blob(manifest.to_json(), mt.OCI_MANIFEST)

    # -- names ------------------------------------------------------------------------------
    def _read_index(self) -> dict:
        try:
            doc = json.loads(self.index_path.read_bytes())
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CacheError(f"corrupt index: {err.msg}", Location(self.index_path)) from err
        if not isinstance(doc, dict) or not isinstance(doc.get("manifests", []), list):
            raise CacheError("corrupt index: no manifests list", Location(self.index_path))
        return doc

    def images(self) -> list[StoredImage]:
        found = []
        for entry in self._read_index().get("manifests", []):
            descriptor = Descriptor.from_dict(entry)
            name = descriptor.annotation(REF_NAME)
            if name:
                full = descriptor.annotation(FULL_NAME) or name
                found.append(StoredImage(name, full, descriptor))
        return sorted(found, key=lambda image: image.name)

    def resolve(self, name: str) -> StoredImage | None:
        """The image tagged `name` (familiar or full form), or None."""
        for image in self.images():
            if name in (image.name, image.full_name):
                return image
        return None

    def tag(self, name: str, full_name: str, descriptor: Descriptor) -> StoredImage:
        """Point `name` at a stored manifest; replaces an earlier image of that name."""
        if not self.has_blob(descriptor.digest):
            raise CacheError(f"cannot tag {name}: manifest {descriptor.digest} is not stored")
        entry = Descriptor(descriptor.media_type, descriptor.digest, descriptor.size)
        entry = entry.with_annotations(**{REF_NAME: name, FULL_NAME: full_name})
        self.ensure()
        with self._index_lock():
            doc = self._read_index()
            if entry.to_dict() in doc.get("manifests", []):
                return StoredImage(name, full_name, entry)  # a rebuild: nothing to write
            kept = [
                item
                for item in doc.get("manifests", [])
                if (item.get("annotations") or {}).get(REF_NAME) != name
            ]
            doc["manifests"] = [*kept, entry.to_dict()]
            doc.setdefault("schemaVersion", 2)
            doc["mediaType"] = mt.OCI_INDEX
            atomic_write(self.index_path, canonical_json(doc))
        return StoredImage(name, full_name, entry)

    def untag(self, name: str) -> bool:
        with self._index_lock():
            doc = self._read_index()
            manifests = doc.get("manifests", [])
            kept = [m for m in manifests if (m.get("annotations") or {}).get(REF_NAME) != name]
            if len(kept) == len(manifests):
                return False
            doc["manifests"] = kept
            atomic_write(self.index_path, canonical_json(doc))
        return True
