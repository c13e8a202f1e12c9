"""Build contexts shipped to remote workers as content-addressed tar blobs of the cache repo."""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from buildgraph.cache.local import LocalStore
from buildgraph.frontend.ignore import IgnoreMatcher
from buildgraph.image.mediatypes import OCI_LAYER
from buildgraph.image.oci import Descriptor
from buildgraph.image.unpack import unpack_layer
from buildgraph.registry.client import RegistryClient
from buildgraph.registry.reference import Reference

CONTEXTS_DIR = "contexts"  # <cache dir>/contexts/<sha256 hex>: unpacked, read-only, kept


@dataclass(frozen=True, slots=True)
class ContextBlob:
    """The files a COPY selects from its context, as one uncompressed tar in the registry."""

    digest: str
    size: int


def _entries(context: Path, paths: tuple[str, ...], ignore: IgnoreMatcher | None) -> Iterator[str]:
    """Every path under the selected ones that `.dockerignore` keeps, parents first, sorted."""
    seen: set[str] = set()
    for selected in sorted(paths):
        relative = selected.strip("/") or "."
        parts = Path(relative).parts
        for depth in range(1, len(parts)):  # the dirs leading to it, so modes come along
            parent = "/".join(parts[:depth])
            if parent not in seen:
                seen.add(parent)
                yield parent
        top = context / relative
        stack = [relative]
        while stack:
            current = stack.pop()
            if current in seen or (
                ignore is not None and current != "." and ignore.matches(current)
            ):
                continue
            seen.add(current)
            yield current
            full = context / current if current != "." else top
            if full.is_dir() and not full.is_symlink():
                names = sorted(os.listdir(full), reverse=True)
                stack.extend(name if current == "." else f"{current}/{name}" for name in names)


def pack_context(
    context: Path,
    paths: tuple[str, ...],
    ignore: IgnoreMatcher | None,
    out: tempfile.SpooledTemporaryFile,
) -> ContextBlob:
    """Write the selected files of `context` into `out` as a tar; its digest names it."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relative in _entries(context, paths, ignore):
            if relative == ".":
                continue
            info = tar.gettarinfo(str(context / relative), arcname=relative)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isfile():
                with open(context / relative, "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    size = out.tell()
    out.seek(0)
    digest = hashlib.sha256()
    while chunk := out.read(1 << 20):
        digest.update(chunk)
    out.seek(0)
    return ContextBlob(f"sha256:{digest.hexdigest()}", size)


def push_context(
    client: RegistryClient,
    repository: Reference,
    context: Path,
    paths: tuple[str, ...],
    ignore: IgnoreMatcher | None,
) -> ContextBlob:
    """Pack and upload (unless the registry has it: one HEAD) the selected context files."""
    with tempfile.SpooledTemporaryFile(max_size=16 << 20) as out:
        blob = pack_context(context, paths, ignore, out)
        client.upload_blob(repository, blob.digest, blob.size, out)  # HEAD first: once per content
    return blob


def pull_context(
    client: RegistryClient, repository: Reference, blob: ContextBlob, store: LocalStore
) -> Path:
    """The unpacked context on this worker: downloaded and unpacked once per content."""
    dest = store.root / CONTEXTS_DIR / blob.digest.removeprefix("sha256:")
    if dest.is_dir():
        return dest
    if not store.has_blob(blob.digest):
        store.put_verified(blob.digest, lambda out: client.fetch_blob(repository, blob.digest, out))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".unpack-") as scratch:
        unpacked = Path(scratch) / "tree"
        unpacked.mkdir()
        with store.open_blob(blob.digest) as handle:
            unpack_layer(handle, OCI_LAYER, unpacked, whiteouts="apply")
        try:
            os.rename(unpacked, dest)  # atomic: a concurrent task may have won the race
        except OSError:
            if not dest.is_dir():
                raise
    return dest


def descriptor(blob: ContextBlob) -> Descriptor:
    return Descriptor(OCI_LAYER, blob.digest, blob.size)
