"""Task results in the remote cache: one OCI artifact per task key, in the cache repository.

Format (FORMAT 1):
- tag: `task-<key>` (a step entry's tag is the bare key: the two never meet).
- manifest: an OCI image manifest with `artifactType` TASK_ARTIFACT and the annotation
  `io.buildgraph.task.key`; its config (CONFIG_TYPE) is the entry's `result.json` as the local
  store writes it (exit status, seconds, log digest, output files with sizes and digests); its
  layers are the log (LOG_TYPE) and the outputs as one uncompressed tar (OCI_LAYER).
- the blobs are pushed first and the manifest (with its tag) last, so a tag never names a blob
  the registry lacks.
A missing tag is a miss (None); an entry that disagrees with itself is a miss with a warning;
a failing registry raises RegistryError.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from typing import TYPE_CHECKING

from buildgraph.errors import InputError, NotFound
from buildgraph.fs import held_dir, safe_join
from buildgraph.image import mediatypes as mt
from buildgraph.image.oci import canonical_json, sha256_digest
from buildgraph.registry.reference import Reference
from buildgraph.cache.task_store import WORK_DIR, TaskResult, TaskStore

if TYPE_CHECKING:
    from buildgraph.registry.client import RegistryClient

FORMAT = 1
TASK_ARTIFACT = "application/vnd.buildgraph.task.v1"
CONFIG_TYPE = "application/vnd.buildgraph.task.config.v1+json"
LOG_TYPE = "application/vnd.buildgraph.task.log.v1"
KEY_ANNOTATION = "io.buildgraph.task.key"
MAX_CONFIG = 4 << 20


class RemoteTaskCache:
    """Task entries in one registry repository; `client` is a factory, called on first use."""

    def __init__(
        self,
        client: Callable[[], RegistryClient],
        repository: Reference,
        *,
        push_to: Reference | None = None,
        warn: Callable[[str], None] = lambda _: None,
    ) -> None:
        """Reads `repository`; pushes to `push_to` (None: pushes nothing)."""
        self._connect = client
        self._client: RegistryClient | None = None
        self.repository = repository.repository_only()
        self.push_to = push_to.repository_only() if push_to is not None else None
        self.warn = warn

    @property
    def client(self) -> RegistryClient:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def tag(self, key: str) -> Reference:
        return self.repository.with_tag(f"task-{key}")

    def has(self, key: str) -> bool:
        """Whether the registry holds an entry for `key` (one HEAD; nothing downloaded)."""
        return self.client.head_manifest(self.tag(key), accept=(mt.OCI_MANIFEST,)) is not None

    def fetch(self, key: str, store: TaskStore) -> TaskResult | None:
        """The entry of `key` from the registry, stored locally; None on a miss."""
        try:
            found = self.client.get_manifest(self.tag(key), accept=(mt.OCI_MANIFEST,))
        except NotFound:
            return None
        try:
            manifest = json.loads(found.data)
            annotations = manifest.get("annotations") or {}
            config_desc, log_desc, outputs_desc = (
                manifest["config"],
                *manifest["layers"],
            )
            if annotations.get(KEY_ANNOTATION) != key or config_desc["size"] > MAX_CONFIG:
                raise ValueError("not the entry of this key")
        except (ValueError, KeyError, TypeError) as err:
            self.warn(f"remote task entry {self.tag(key)}: ignored: {err}")
            return None
        config = self._blob(config_desc["digest"])
        log = self._blob(log_desc["digest"])
        doc = json.loads(config)
        with held_dir(store.root / WORK_DIR, "fetch-") as scratch:
            outputs = scratch / "outputs"
            outputs.mkdir()
            buffer = io.BytesIO()
            self.client.fetch_blob(self.repository, outputs_desc["digest"], buffer)  # verified
            buffer.seek(0)
            try:
                _extract(buffer, outputs)
            except (ValueError, InputError) as err:  # InputError: a name escaping the dir
                self.warn(f"remote task entry {self.tag(key)}: ignored: {err}")
                return None
            result = store.put(key, int(doc["exit_code"]), float(doc["seconds"]), log, outputs)
        if result.files != tuple((item["path"], item["digest"]) for item in doc["outputs"]):
            store.forget(key)
            self.warn(f"remote task entry {self.tag(key)}: ignored: outputs do not match")
            return None
        return result

    def push(self, result: TaskResult) -> None:
        """Blobs first, then the manifest under the task's tag."""
        if self.push_to is None:
            return
        repository = self.push_to
        config = (result.outputs_dir.parent / "result.json").read_bytes()
        blobs = [
            (CONFIG_TYPE, config),
            (LOG_TYPE, result.log),
            (mt.OCI_LAYER, _tar(result)),
        ]
        descriptors = []
        for media_type, data in blobs:
            digest = sha256_digest(data)
            self.client.upload_blob(repository, digest, len(data), io.BytesIO(data))
            descriptors.append({"mediaType": media_type, "digest": digest, "size": len(data)})
        manifest = {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "artifactType": TASK_ARTIFACT,
            "config": descriptors[0],
            "layers": descriptors[1:],
            "annotations": {KEY_ANNOTATION: result.key, "io.buildgraph.task.format": str(FORMAT)},
        }
        tag = repository.with_tag(f"task-{result.key}")
        self.client.put_manifest(tag, canonical_json(manifest), mt.OCI_MANIFEST)

    def _blob(self, digest: str) -> bytes:
        buffer = io.BytesIO()
        self.client.fetch_blob(self.repository, digest, buffer)  # verified against its digest
        return buffer.getvalue()


def _tar(result: TaskResult) -> bytes:
    """The outputs as a tar with fixed owners and times: the same outputs, the same bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for item in result.outputs:
            info = tarfile.TarInfo(item.path)
            info.size = item.size
            info.mode = item.mode
            with open(result.outputs_dir / item.path, "rb") as handle:
                archive.addfile(info, handle)
    return buffer.getvalue()


def _extract(source: io.BytesIO, destination: os.PathLike[str]) -> None:
    """Regular files only, each below `destination` (safe_join refuses `..` and absolute names)."""
    from pathlib import Path

    root = Path(destination)
    with tarfile.open(fileobj=source, mode="r:") as archive:
        for member in archive:
            if not member.isfile():
                raise ValueError(f"{member.name}: not a regular file")
            target = safe_join(root, member.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            handle = archive.extractfile(member)
            assert handle is not None
            with open(target, "xb") as out:
                out.write(handle.read())
            os.chmod(target, stat.S_IMODE(member.mode) & 0o755 | 0o600)
