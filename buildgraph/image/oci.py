"""OCI and Docker schema2 manifests, indexes and descriptors; platform selection."""

from __future__ import annotations

import hashlib
import json
import platform as host_platform
from dataclasses import dataclass, field, replace
from typing import Any

from buildgraph.errors import InputError
from buildgraph.image import mediatypes as mt

ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(doc: Any) -> bytes:
    """Deterministic JSON: sorted keys, no spaces, so equal documents have equal digests."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def to_dict(self) -> dict[str, str]:
        doc = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            doc["variant"] = self.variant
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Platform:
        return cls(doc.get("os", ""), doc.get("architecture", ""), doc.get("variant", "") or "")

    def matches(self, other: Platform) -> bool:
        """`other` (a manifest's platform) runs here; an unset variant matches any."""
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return not self.variant or not other.variant or self.variant == other.variant


def parse_platform(text: str) -> Platform:
    parts = text.strip().split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        raise InputError(f"invalid platform {text!r}: expected os/arch[/variant]")
    os_name, arch = parts[0].lower(), ARCH_ALIASES.get(parts[1].lower(), parts[1].lower())
    variant = parts[2].lower() if len(parts) == 3 else ""
    if arch == "arm64" and variant == "v8":
        variant = ""  # docker normalises arm64/v8 to arm64
    return Platform(os_name, arch, variant)


def default_platform() -> Platform:
    """The host's platform, as docker picks it (linux/amd64 on x86_64)."""
    machine = host_platform.machine().lower()
    arch = ARCH_ALIASES.get(machine, machine)
    return Platform("linux", arch, "v7" if arch == "arm" else "")


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: tuple[tuple[str, str], ...] = ()
    platform: Platform | None = None
    urls: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.urls:
            doc["urls"] = list(self.urls)
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        if self.platform:
            doc["platform"] = self.platform.to_dict()
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Descriptor:
        try:
            return cls(
                media_type=doc.get("mediaType", ""),
                digest=doc["digest"],
                size=int(doc["size"]),
                annotations=tuple(sorted((doc.get("annotations") or {}).items())),
                platform=Platform.from_dict(doc["platform"]) if doc.get("platform") else None,
                urls=tuple(doc.get("urls") or ()),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"invalid descriptor: {err}") from err

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)

    def with_annotations(self, **values: str) -> Descriptor:
        merged = dict(self.annotations) | values
        return replace(self, annotations=tuple(sorted(merged.items())))


@dataclass(frozen=True, slots=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = mt.OCI_MANIFEST
    annotations: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_dict(),
            "layers": [layer.to_dict() for layer in self.layers],
        }
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return canonical_json(doc)

    @property
    def is_docker(self) -> bool:
        return self.media_type == mt.DOCKER_MANIFEST


DOCKER_LAYER_TYPES = {mt.OCI_LAYER_GZIP: mt.DOCKER_LAYER_GZIP, mt.OCI_LAYER: mt.PLAIN_LAYERS[1]}


def as_docker_manifest(manifest: Manifest) -> Manifest:
    """The same image as a Docker schema2 manifest (only media types change)."""
    if manifest.is_docker:
        return manifest
    layers = []
    for layer in manifest.layers:
        kind = DOCKER_LAYER_TYPES.get(layer.media_type, layer.media_type)
        if kind not in mt.GZIP_LAYERS and kind not in mt.PLAIN_LAYERS:
            raise InputError(f"layer type {layer.media_type} has no Docker schema2 equivalent")
        layers.append(replace(layer, media_type=kind))
    config = replace(manifest.config, media_type=mt.DOCKER_CONFIG)
    return Manifest(config, tuple(layers), mt.DOCKER_MANIFEST)


@dataclass(frozen=True, slots=True)
class Index:
    manifests: tuple[Descriptor, ...]
    media_type: str = mt.OCI_INDEX
    annotations: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "manifests": [item.to_dict() for item in self.manifests],
        }
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return canonical_json(doc)

    def select(self, wanted: Platform) -> Descriptor:
        """The manifest for `wanted`, preferring an exact variant match."""
        candidates = [d for d in self.manifests if d.platform and wanted.matches(d.platform)]
        exact = [d for d in candidates if d.platform and d.platform.variant == wanted.variant]
        if exact or candidates:
            return (exact or candidates)[0]
        offered = ", ".join(str(d.platform) for d in self.manifests if d.platform) or "none"
        raise InputError(f"no manifest for platform {wanted} (offered: {offered})")


def parse_document(data: bytes, media_type: str = "") -> Manifest | Index:
    """A manifest or index from its bytes; the media type header wins over the body's."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"invalid manifest JSON: {err}") from err
    if not isinstance(doc, dict):
        raise InputError("invalid manifest: not a JSON object")
    kind = doc.get("mediaType") or media_type
    if not kind:  # OCI allows mediaType to be absent: tell by the shape
        kind = mt.OCI_INDEX if "manifests" in doc else mt.OCI_MANIFEST
    annotations = tuple(sorted((doc.get("annotations") or {}).items()))
    if kind in mt.INDEXES:
        manifests = tuple(Descriptor.from_dict(d) for d in doc.get("manifests") or ())
        return Index(manifests, kind, annotations)
    if kind in mt.MANIFESTS:
        if doc.get("schemaVersion") != 2 or "config" not in doc:
            raise InputError(f"unsupported manifest (schemaVersion {doc.get('schemaVersion')})")
        layers = tuple(Descriptor.from_dict(d) for d in doc.get("layers") or ())
        return Manifest(Descriptor.from_dict(doc["config"]), layers, kind, annotations)
    raise InputError(f"unsupported manifest media type {kind!r}")


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """An image as stored: the manifest descriptor and the parsed manifest."""

    descriptor: Descriptor
    manifest: Manifest
    names: tuple[str, ...] = field(default=())
