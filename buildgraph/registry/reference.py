"""Image references parsed and normalised exactly as docker's distribution/reference does."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from buildgraph.errors import InputError

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
OFFICIAL_REPOSITORY_PREFIX = "library/"
NAME_TOTAL_LENGTH_MAX = 255  # the whole name, registry included

# The grammar of distribution/reference/regexp.go, piece by piece.
_ALPHA_NUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHA_NUMERIC}(?:{_SEPARATOR}{_ALPHA_NUMERIC})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6_ADDRESS = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6_ADDRESS})(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE_RE = re.compile(rf"({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?", re.ASCII)
_PATH_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*", re.ASCII)
_TAG_RE = re.compile(_TAG, re.ASCII)
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


@dataclass(frozen=True, slots=True)
class Reference:
    registry: str  # "docker.io", "localhost:5000", "127.0.0.1:5000", "ghcr.io"
    repository: str  # "library/busybox", "acme/api"
    tag: str | None = None
    digest: str | None = None  # "sha256:<64 hex>"

    def __str__(self) -> str:
        return self.name + self._suffix()

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def familiar(self) -> str:
        """Docker's short form: "busybox:latest", "acme/api:1", "ghcr.io/o/x:1"."""
        if self.registry != DEFAULT_DOMAIN:
            return str(self)
        repository = self.repository.removeprefix(OFFICIAL_REPOSITORY_PREFIX)
        if "/" in repository:  # "library/a/b" stays whole, as docker prints it
            repository = self.repository
        return repository + self._suffix()

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API_HOST if self.registry == DEFAULT_DOMAIN else self.registry

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest if there is one, else the tag."""
        reference = self.digest or self.tag
        if reference is None:
            raise InputError(f"image reference {self} has neither a tag nor a digest")
        return reference

    def with_tag(self, tag: str) -> Reference:
        if not _TAG_RE.fullmatch(tag):
            raise InputError(f"invalid tag {tag!r} for {self.name}: {_TAG_RULE}")
        return replace(self, tag=tag)

    def with_digest(self, digest: str) -> Reference:
        _check_digest(digest, self.name)
        return replace(self, digest=digest)

    def repository_only(self) -> Reference:
        return Reference(self.registry, self.repository)

    def _suffix(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return tag + digest


_TAG_RULE = "a tag is up to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"


def parse_reference(text: str, *, default_tag: str | None = "latest") -> Reference:
    """Parse like docker's ParseNormalizedNamed, then add `default_tag` to a bare name."""
    if not text:
        raise InputError("invalid image reference '': it is empty")
    if _IDENTIFIER_RE.fullmatch(text):
        raise InputError(
            f"invalid image reference {text!r}: a 64-character hex string is an image ID, "
            "not a repository name"
        )
    domain, remainder = _split_domain(text)
    path_part = remainder.split("@", 1)[0].split(":", 1)[0]
    if path_part.lower() != path_part:
        raise InputError(f"invalid image reference {text!r}: repository name must be lowercase")
    match = _REFERENCE_RE.fullmatch(f"{domain}/{remainder}")
    if match is None:
        typed = text if remainder.endswith(text) else text.partition("/")[2]
        raise InputError(f"invalid image reference {text!r}: {_explain(typed)}")
    name, tag, digest = match.groups()
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise InputError(
            f"invalid image reference {text[:40]!r}...: name is longer than "
            f"{NAME_TOTAL_LENGTH_MAX} characters"
        )
    if digest is not None:
        _check_digest(digest, text)
    if tag is None and digest is None:
        tag = default_tag
    return Reference(domain, name[len(domain) + 1 :], tag, digest)


def parse_repository(text: str) -> Reference:
    """A repository with neither tag nor digest, e.g. a cache repository."""
    reference = parse_reference(text, default_tag=None)
    if reference.tag or reference.digest:
        raise InputError(f"invalid repository {text!r}: a repository takes no tag or digest")
    return reference


def _split_domain(text: str) -> tuple[str, str]:
    """distribution/reference splitDockerDomain: is the first component a registry?"""
    first, slash, rest = text.partition("/")
    if slash and (
        any(char in first for char in ".:") or first == "localhost" or first.lower() != first
    ):
        domain, remainder = first, rest
    else:
        domain, remainder = DEFAULT_DOMAIN, text
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder.split("@", 1)[0].split(":", 1)[0]:
        remainder = OFFICIAL_REPOSITORY_PREFIX + remainder
    if not _DOMAIN_RE.fullmatch(domain):
        raise InputError(f"invalid image reference {text!r}: invalid registry {domain!r}")
    return domain, remainder


_DOMAIN_RE = re.compile(_DOMAIN, re.ASCII)


def _explain(remainder: str) -> str:
    """Say which part of `remainder` (the reference past its registry) is wrong."""
    rest, at, digest = remainder.partition("@")
    path, colon, tag = rest.partition(":")
    if not path:
        return "repository name is empty"
    if not _PATH_RE.fullmatch(path):
        return (
            "repository name components are lowercase letters and digits, "
            "separated by '.', '_', '__' or dashes, and joined by '/'"
        )
    if colon and not _TAG_RE.fullmatch(tag):
        return f"invalid tag {tag!r}: {_TAG_RULE}"
    if at:
        algorithm = digest.partition(":")[0]
        if algorithm in _DIGEST_HEX_LENGTHS:
            length = _DIGEST_HEX_LENGTHS[algorithm]
            return f"invalid digest {digest!r}: {algorithm} needs {length} lowercase hex digits"
        return f"invalid digest {digest!r}: expected algorithm:hex"
    return "invalid reference format"


def _check_digest(digest: str, text: str) -> None:
    algorithm, colon, encoded = digest.partition(":")
    length = _DIGEST_HEX_LENGTHS.get(algorithm)
    if not colon or length is None:
        raise InputError(
            f"invalid digest {digest!r} in {text!r}: algorithm must be one of "
            + ", ".join(_DIGEST_HEX_LENGTHS)
        )
    if len(encoded) != length or not re.fullmatch(r"[a-f0-9]+", encoded):
        raise InputError(
            f"invalid digest {digest!r} in {text!r}: "
            f"{algorithm} needs {length} lowercase hex digits"
        )
