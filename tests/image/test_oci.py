from __future__ import annotations

import json

import pytest

from buildgraph.errors import InputError
from buildgraph.image import mediatypes as mt
from buildgraph.image.config import Healthcheck, HistoryEntry, ImageConfig, RuntimeConfig
from buildgraph.image.oci import (
    Descriptor,
    Index,
    Manifest,
    Platform,
    parse_document,
    parse_platform,
    sha256_digest,
)

DIGEST = sha256_digest(b"x")


def descriptor(arch: str, variant: str = "") -> Descriptor:
    return Descriptor(
        mt.OCI_MANIFEST,
        sha256_digest(arch.encode() + variant.encode()),
        10,
        platform=Platform("linux", arch, variant),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/arm64/v8", Platform("linux", "arm64")),
        ("linux/arm/v7", Platform("linux", "arm", "v7")),
        ("Linux/AMD64", Platform("linux", "amd64")),
    ],
)
def test_parse_platform(text: str, expected: Platform) -> None:
    assert parse_platform(text) == expected


@pytest.mark.parametrize("text", ["linux", "", "linux/", "a/b/c/d"])
def test_bad_platform_is_input_error(text: str) -> None:
    with pytest.raises(InputError):
        parse_platform(text)


def test_index_selects_platform_preferring_exact_variant() -> None:
    index = Index((descriptor("arm", "v6"), descriptor("arm", "v7"), descriptor("amd64")))
    assert index.select(Platform("linux", "amd64")).platform == Platform("linux", "amd64")
    assert index.select(Platform("linux", "arm", "v7")).platform == Platform("linux", "arm", "v7")
    with pytest.raises(InputError, match="offered: linux/arm/v6"):
        index.select(Platform("linux", "s390x"))


def test_docker_manifest_list_parses_as_index() -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.DOCKER_MANIFEST_LIST,
        "manifests": [descriptor("amd64").to_dict()],
    }
    parsed = parse_document(json.dumps(doc).encode())
    assert isinstance(parsed, Index)
    assert parsed.media_type == mt.DOCKER_MANIFEST_LIST


def test_manifest_round_trip_keeps_every_field() -> None:
    config = Descriptor(mt.OCI_CONFIG, DIGEST, 5)
    layer = Descriptor(mt.OCI_LAYER_GZIP, DIGEST, 7, annotations=(("a", "b"),), urls=("u",))
    manifest = Manifest(config, (layer,), annotations=(("k", "v"),))
    assert parse_document(manifest.to_json()) == manifest


def test_manifest_without_media_type_is_told_by_shape() -> None:
    doc = {"schemaVersion": 2, "config": Descriptor(mt.OCI_CONFIG, DIGEST, 5).to_dict()}
    assert isinstance(parse_document(json.dumps(doc).encode()), Manifest)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"schemaVersion": 1, "mediaType": "' + mt.DOCKER_MANIFEST.encode() + b'"}',
        b'{"mediaType": "text/plain"}',
    ],
)
def test_bad_manifest_is_input_error(data: bytes) -> None:
    with pytest.raises(InputError):
        parse_document(data)


def test_config_round_trip_keeps_every_field() -> None:
    runtime = RuntimeConfig(
        user="app:app",
        env=("PATH=/bin", "A=1"),
        entrypoint=("/bin/sh", "-c"),
        cmd=(),
        working_dir="/srv",
        labels=(("a", "1"), ("b", "2")),
        exposed_ports=("53/udp", "80/tcp"),
        volumes=("/data",),
        stop_signal="SIGTERM",
        healthcheck=Healthcheck(("CMD-SHELL", "true"), 30_000_000_000, 5, 6, 7, 3),
        on_build=("RUN echo hi",),
        shell=("/bin/bash", "-c"),
        args_escaped=True,
    )
    history = (HistoryEntry("2024-01-01T00:00:00Z", "RUN x", "me", "c", True),)
    config = ImageConfig(
        Platform("linux", "arm", "v7"),
        runtime,
        (DIGEST,),
        history,
        "2024-01-01T00:00:00Z",
        "me",
        "10",
    )
    parsed = ImageConfig.from_json(config.to_json())
    assert parsed == config
    doc = json.loads(config.to_json())
    assert doc["config"]["Cmd"] == []  # an empty Cmd is kept, not dropped
    assert doc["config"]["Healthcheck"]["Test"] == ["CMD-SHELL", "true"]
    assert doc["rootfs"] == {"type": "layers", "diff_ids": [DIGEST]}


def test_with_env_replaces_an_existing_key_in_place() -> None:
    runtime = RuntimeConfig(env=("A=1", "B=2")).with_env("A", "3").with_env("C", "4")
    assert runtime.env == ("A=3", "B=2", "C=4")
    assert runtime.env_dict() == {"A": "3", "B": "2", "C": "4"}
