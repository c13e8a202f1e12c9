"""Exporters: an image from the local store to an OCI layout, a docker-archive or a rootfs dir."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from buildgraph.cache.local import LocalStore, StoredImage
from buildgraph.errors import CacheError, InputError
from buildgraph.fs import atomic_file
from buildgraph.cache.compress import COMPRESSIONS, for_registry
from buildgraph.image.codec import open_layer
from buildgraph.image.unpack import unpack_layer

OUTPUT_TYPES = ("oci", "docker", "local", "registry", "image")
COPY_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class OutputSpec:
    type: str
    dest: str = ""
    attrs: tuple[tuple[str, str], ...] = ()

    def attr(self, key: str, default: str = "") -> str:
        return dict(self.attrs).get(key, default)


def parse_output(text: str) -> OutputSpec:
    """Parse a buildx-style `--output` value; a bare path means `type=local,dest=PATH`."""
    if "=" not in text:
        if text == "-":
            raise InputError("--output -: writing an image to stdout is not supported")
        return OutputSpec("local", text)
    fields: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"invalid --output {text!r}: expected key=value pairs")
        fields[key.strip()] = value.strip()
    kind = fields.pop("type", "")
    if kind not in OUTPUT_TYPES:
        raise InputError(
            f"invalid --output {text!r}: type must be one of {', '.join(OUTPUT_TYPES)}"
        )
    dest = fields.pop("dest", "")
    if kind in ("oci", "docker", "local") and not dest:
        raise InputError(f"invalid --output {text!r}: type={kind} needs dest=")
    return OutputSpec(kind, dest, tuple(sorted(fields.items())))


def output_compression(spec: OutputSpec, default: str = "") -> str:
    """The `compression=` attribute of an output (buildx's spelling), or `default`."""
    value = spec.attr("compression", default)
    if value and spec.type not in ("oci", "registry", "image"):
        raise InputError(f"--output type={spec.type}: compression= applies to oci and registry")
    if value and value not in COMPRESSIONS:
        raise InputError(f"--output compression={value}: expected {' or '.join(COMPRESSIONS)}")
    return value


def export_oci(
    store: LocalStore, image: StoredImage, dest: Path, name: str = "", compression: str = ""
) -> None:
    """Copy the image into the OCI layout at `dest` (created or added to), tagged `name`.
    Layers go as stored (built ones uncompressed) unless `compression` (gzip or zstd) is given;
    then the layout gets compressed layers and its own manifest."""
    target = LocalStore(dest).ensure()
    stored = store.read_manifest(image.descriptor)
    manifest, descriptor = stored, image.descriptor
    if compression:
        manifest = for_registry(store, stored, compression)
    for blob in (manifest.config, *manifest.layers):
        if not target.has_blob(blob.digest):
            with store.open_blob(blob.digest) as source:
                _copy_blob(source, target, blob.digest)
    if manifest == stored:
        if not target.has_blob(descriptor.digest):
            with store.open_blob(descriptor.digest) as source:
                _copy_blob(source, target, descriptor.digest)
    else:
        descriptor = target.put_blob(manifest.to_json(), manifest.media_type)
    tag = name or image.name
    target.tag(tag, image.full_name if tag == image.name else tag, descriptor)


def _copy_blob(source, target: LocalStore, digest: str) -> None:
    with target.ingest(digest) as writer:
        while chunk := source.read(COPY_CHUNK):
            writer.write(chunk)


def export_docker_archive(
    store: LocalStore, image: StoredImage, dest: Path, names: Sequence[str] = ()
) -> None:
    """Write a docker-archive (`docker load`, `skopeo ... docker-archive:`) to `dest`."""
    manifest = store.read_manifest(image.descriptor)
    config = store.read_config(manifest)
    if len(config.diff_ids) != len(manifest.layers):
        raise CacheError(
            f"image {image.name}: config lists {len(config.diff_ids)} layers, "
            f"manifest {len(manifest.layers)}"
        )
    config_name = manifest.config.digest.removeprefix("sha256:") + ".json"
    layer_names = [diff_id.removeprefix("sha256:") + "/layer.tar" for diff_id in config.diff_ids]
    entry = {"Config": config_name, "RepoTags": list(names or [image.name]), "Layers": layer_names}
    with (
        atomic_file(dest) as handle,
        tarfile.open(fileobj=handle, mode="w|", format=tarfile.PAX_FORMAT) as archive,
    ):
        _add_bytes(archive, config_name, store.read_blob(manifest.config.digest))
        seen: set[str] = set()
        for layer, layer_name in zip(manifest.layers, layer_names, strict=True):
            if layer_name in seen:  # two equal layers: docker-archive stores one file
                continue
            seen.add(layer_name)
            with _uncompressed_copy(store, layer.digest, layer.media_type) as (path, size):
                info = tarfile.TarInfo(layer_name)
                info.size = size
                with open(path, "rb") as layer_file:
                    archive.addfile(info, layer_file)
        _add_bytes(archive, "manifest.json", json.dumps([entry]).encode())


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@contextlib.contextmanager
def _uncompressed_copy(
    store: LocalStore, digest: str, media_type: str
) -> Iterator[tuple[str, int]]:
    # The tar header needs the size first, so the layer is decompressed to a temp file.
    fd, path = tempfile.mkstemp(prefix="layer-", dir=store.root / "ingest")
    try:
        with os.fdopen(fd, "wb") as out, store.open_blob(digest) as blob:
            shutil.copyfileobj(open_layer(blob, media_type), out, COPY_CHUNK)
            size = out.tell()
        yield path, size
    finally:
        os.unlink(path)


def export_local(store: LocalStore, image: StoredImage, dest: Path) -> None:
    """Unpack the image's root filesystem into `dest` (new or empty)."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError(f"output directory {dest} exists and is not empty")
    manifest = store.read_manifest(image.descriptor)
    config = store.read_config(manifest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes 0700; a root filesystem's top is 0755
        for layer, diff_id in zip(manifest.layers, config.diff_ids, strict=False):
            with store.open_blob(layer.digest) as blob:
                found = unpack_layer(blob, layer.media_type, staging, whiteouts="apply")
            if found != diff_id:
                raise CacheError(f"corrupt layer {layer.digest}: diff_id {found} != {diff_id}")
        if dest.exists():
            dest.rmdir()
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
