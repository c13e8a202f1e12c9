"""Image references parse and normalise the way docker's distribution/reference does."""

from __future__ import annotations

import pytest

from buildgraph.errors import InputError
from buildgraph.registry.reference import Reference, parse_reference, parse_repository

SHA_A = "sha256:" + "a" * 64
SHA_B = "sha256:" + "86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa"

# text -> (canonical str(), familiar, registry, repository, tag, digest)
VALID = [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/library/busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("index.docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/acme/api:1", "docker.io/acme/api:1", "acme/api:1"),
    ("acme/api:1", "docker.io/acme/api:1", "acme/api:1"),
    ("library/foo/bar", "docker.io/library/foo/bar:latest", "library/foo/bar:latest"),
    ("localhost/foo", "localhost/foo:latest", "localhost/foo:latest"),
    ("localhost:5000/foo:tag", "localhost:5000/foo:tag", "localhost:5000/foo:tag"),
    (f"127.0.0.1:5000/a/b@{SHA_A}", f"127.0.0.1:5000/a/b@{SHA_A}", f"127.0.0.1:5000/a/b@{SHA_A}"),
    (f"foo:tag@{SHA_A}", f"docker.io/library/foo:tag@{SHA_A}", f"foo:tag@{SHA_A}"),
    (f"busybox:latest@{SHA_B}", f"docker.io/library/busybox:latest@{SHA_B}", None),
    (f"foo@{SHA_A}", f"docker.io/library/foo@{SHA_A}", f"foo@{SHA_A}"),
    ("ghcr.io/acme/tools/api:v1.2.3", "ghcr.io/acme/tools/api:v1.2.3", None),
    ("example.com:8000/privatebase", "example.com:8000/privatebase:latest", None),
    ("test-com:8080/foo", "test-com:8080/foo:latest", None),
    ("xn--n3h.com/foo", "xn--n3h.com/foo:latest", None),
    ("test_com/foo", "docker.io/test_com/foo:latest", "test_com/foo:latest"),
    ("[::1]:5000/foo:1", "[::1]:5000/foo:1", None),
    ("foo__bar", "docker.io/library/foo__bar:latest", None),
    ("foo_bar.baz-qux", "docker.io/library/foo_bar.baz-qux:latest", None),
    ("docker---rules/docker", "docker.io/docker---rules/docker:latest", None),
    ("d/docker", "docker.io/d/docker:latest", None),
    ("foo:Tag_1.0-rc", "docker.io/library/foo:Tag_1.0-rc", None),
    ("foo:" + "t" * 128, "docker.io/library/foo:" + "t" * 128, None),
    ("Foo/bar", "Foo/bar:latest", None),  # docker: an uppercase first part is a registry
    ("docker.io/" + "1a" * 32, "docker.io/library/" + "1a" * 32 + ":latest", None),
]


@pytest.mark.parametrize(("text", "canonical", "familiar"), VALID)
def test_valid_reference(text: str, canonical: str, familiar: str | None) -> None:
    ref = parse_reference(text)
    assert str(ref) == canonical
    if familiar is not None:
        assert ref.familiar == familiar
    assert parse_reference(str(ref)) == ref  # canonical text parses back to itself


# text -> a word the message must contain
INVALID = [
    ("", "empty"),
    ("FOO", "lowercase"),
    ("docker/Docker", "lowercase"),
    ("docker.io/docker/Docker", "lowercase"),
    ("foo:", "invalid tag"),
    (":tag", "empty"),
    ("foo:-x", "invalid tag"),
    ("foo:.x", "invalid tag"),
    ("foo:" + "t" * 129, "invalid tag"),
    ("foo@sha256:short", "64 lowercase hex"),
    ("foo@sha256:" + "A" * 64, "64 lowercase hex"),
    ("foo@sha256:" + "a" * 63, "64 lowercase hex"),
    ("foo@md5:" + "a" * 32, "algorithm"),
    ("foo@" + "a" * 64, "digest"),
    ("-foo", "components"),
    ("-docker/docker", "components"),
    ("docker-/docker", "components"),
    ("foo..bar", "components"),
    ("dock-.er/docker", "registry"),
    ("____/____", "components"),
    ("_docker/_docker", "components"),
    ("docker///docker", "components"),
    ("docker/", "components"),
    ("a" * 256, "longer than 255"),
    ("a" * 240, "longer than 255"),  # docker.io/library/ counts too
    ("1a" * 32, "image ID"),
    ("https://github.com/docker/docker", "registry"),
    ("-docker.io/docker/docker", "registry"),
    ("foo bar", "invalid"),
]


@pytest.mark.parametrize(("text", "word"), INVALID)
def test_invalid_reference(text: str, word: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_reference(text)
    message = str(caught.value)
    assert word in message
    assert repr(text[:40])[:-1] in message  # the message quotes what was typed


def test_parts_and_properties() -> None:
    ref = parse_reference(f"busybox:1.36@{SHA_A}")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        "docker.io",
        "library/busybox",
        "1.36",
        SHA_A,
    )
    assert ref.name == "docker.io/library/busybox"
    assert ref.api_host == "registry-1.docker.io"
    assert ref.reference == SHA_A  # the digest wins for /manifests/<reference>
    local = parse_reference("127.0.0.1:5000/acme/api:1")
    assert (local.api_host, local.reference, local.name) == (
        "127.0.0.1:5000",
        "1",
        "127.0.0.1:5000/acme/api",
    )


def test_digest_only_gets_no_default_tag() -> None:
    assert parse_reference(f"foo@{SHA_A}").tag is None
    assert parse_reference("foo", default_tag="stable").tag == "stable"


def test_with_tag_and_with_digest_validate() -> None:
    ref = parse_reference("acme/api:1")
    assert str(ref.with_tag("2")) == "docker.io/acme/api:2"
    assert str(ref.with_digest(SHA_A)) == f"docker.io/acme/api:1@{SHA_A}"
    with pytest.raises(InputError, match="invalid tag"):
        ref.with_tag("-bad")
    with pytest.raises(InputError, match="digest"):
        ref.with_digest("sha256:nothex")


def test_reference_without_tag_or_digest_has_no_manifest_reference() -> None:
    with pytest.raises(InputError, match="neither a tag nor a digest"):
        _ = Reference("docker.io", "library/busybox").reference


def test_parse_repository() -> None:
    repo = parse_repository("localhost:5000/cache/app")
    assert (repo.registry, repo.repository, repo.tag, repo.digest) == (
        "localhost:5000",
        "cache/app",
        None,
        None,
    )
    assert str(repo) == "localhost:5000/cache/app"
    assert str(parse_repository("busybox")) == "docker.io/library/busybox"
    with pytest.raises(InputError, match="no tag or digest"):
        parse_repository("localhost:5000/cache/app:1")
