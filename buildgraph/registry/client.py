"""The registry client: manifests, blobs and tags over the OCI distribution API."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urljoin

import requests

from buildgraph.errors import DigestMismatch, InputError, NotFound, RegistryError
from buildgraph.image.mediatypes import ALL_MANIFESTS
from buildgraph.registry.auth import CredentialStore, repository_scope
from buildgraph.registry.reference import Reference
from buildgraph.registry.responses import raise_for_status, short_reason
from buildgraph.registry.transport import RETRYABLE_ERRORS, Deadline, Retry, Transport
from buildgraph.registry.upload import (
    cancel_upload,
    location_of,
    mount_or_upload,
    position,
    upload,
    upload_stream,
    uploads_path,
)

DOWNLOAD_CHUNK = 1 << 20  # bytes per read while streaming a blob
# What registries must accept (OCI distribution spec); a bigger "manifest" is refused unread,
# so a hostile registry cannot make a lookup buffer gigabytes.
MAX_MANIFEST_SIZE = 4 << 20
BEST_EFFORT_RETRIES = 2  # a remote cache: retried after 0.25 s and 0.5 s, then down
BEST_EFFORT_BACKOFF = 0.25
BEST_EFFORT_SILENCE = 5.0  # seconds; a cache registry silent that long has hung


@dataclass(frozen=True, slots=True)
class ManifestResponse:
    data: bytes  # b"" from head_manifest
    media_type: str
    digest: str


class RegistryClient:
    """Talks to any number of registries; safe to share between threads."""

    def __init__(
        self,
        *,
        credentials: CredentialStore | None = None,
        insecure: Iterable[str] = (),
        ca_bundle: str | None = None,
        total_timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 0.5,
        silence: float | None = None,
    ) -> None:
        insecure = tuple(insecure)
        # another client with these settings and other retries (best_effort)
        self._sibling = functools.partial(
            RegistryClient,
            credentials=credentials,
            insecure=insecure,
            ca_bundle=ca_bundle,
            total_timeout=total_timeout,
        )
        self._transport = Transport(
            credentials=credentials,
            insecure=insecure,
            ca_bundle=ca_bundle,
            total_timeout=total_timeout,
            retries=retries,
            backoff=backoff,
            silence=silence,
        )

    def close(self) -> None:
        self._transport.close()

    def best_effort(self) -> RegistryClient:
        """A client with the same credentials and TLS settings that gives up sooner, for a
        remote cache: it only saves work, so a failing registry should cost the run seconds,
        not the minutes that pulling a base image may be worth. Connection errors and 5xx are
        retried BEST_EFFORT_RETRIES times; a server silent for BEST_EFFORT_SILENCE seconds is
        not asked again; either way the registry is then down for the rest of the run."""
        return self._sibling(
            retries=BEST_EFFORT_RETRIES, backoff=BEST_EFFORT_BACKOFF, silence=BEST_EFFORT_SILENCE
        )

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self, registry: str) -> None:
        """GET /v2/: a 200, or a 401 with a challenge, means a registry is there."""
        response = self._transport.request("GET", registry, "/v2/", scopes=(), authenticate=False)
        with response:
            challenge = response.headers.get("WWW-Authenticate", "")
            if response.status_code == 401 and challenge:
                self._transport.remember_challenge(registry, challenge)
                return
            raise_for_status(response, registry, (), "API version check /v2/")

    def get_manifest(
        self, ref: Reference, accept: Sequence[str] = ALL_MANIFESTS, *, budget: float | None = None
    ) -> ManifestResponse:
        """The manifest, digest checked; `budget` bounds the seconds spent, retries included."""
        scopes = _pull(ref)
        subject = f"manifest {ref}"

        def attempt(deadline: Deadline) -> tuple[bytes, str, str | None]:
            response = self._transport.send(
                "GET",
                ref.registry,
                _manifest_path(ref),
                scopes=scopes,
                deadline=deadline,
                headers=_accept(accept),
                stream=True,
            )
            with response:
                if response.status_code == 404:
                    raise NotFound(f"manifest unknown: {ref}")
                raise_for_status(response, ref.registry, scopes, subject)
                data = _read_limited(response, MAX_MANIFEST_SIZE, ref.registry, subject)
                claimed = response.headers.get("Docker-Content-Digest")
                return data, _media_type(response, data), claimed

        data, media_type, claimed = self._transport.run(ref.registry, attempt, budget=budget)
        digest = _check_manifest_digest(ref, data, claimed)
        return ManifestResponse(data, media_type, digest)

    def head_manifest(
        self, ref: Reference, accept: Sequence[str] = ALL_MANIFESTS
    ) -> ManifestResponse | None:
        scopes = _pull(ref)
        response = self._transport.request(
            "HEAD", ref.registry, _manifest_path(ref), scopes=scopes, headers=_accept(accept)
        )
        with response:
            if response.status_code == 404:
                return None
            raise_for_status(response, ref.registry, scopes, f"manifest {ref}")
            claimed = response.headers.get("Docker-Content-Digest")
            media_type = _media_type(response, b"")
        if ref.digest and claimed and claimed != ref.digest:
            raise DigestMismatch(f"manifest {ref}: registry {ref.registry} says {claimed}")
        digest = claimed or ref.digest
        if digest is None:  # a registry that does not say: fetch and hash it ourselves
            fetched = self.get_manifest(ref, accept)
            return ManifestResponse(b"", fetched.media_type, fetched.digest)
        return ManifestResponse(b"", media_type, digest)

    def put_manifest(self, ref: Reference, data: bytes, media_type: str) -> str:
        """Push under ref's tag, else under its digest (or the content's); returns the digest."""
        digest = ref.digest or _sha256(data)
        if _hash(digest, data) != digest:
            raise DigestMismatch(f"manifest for {ref} hashes to {_sha256(data)}, not {digest}")
        target = ref if ref.tag else ref.with_digest(digest)
        scopes = _push(ref)
        response = self._transport.request(
            "PUT",
            ref.registry,
            f"/v2/{ref.repository}/manifests/{ref.tag or digest}",
            scopes=scopes,
            headers={"Content-Type": media_type},
            data=data,
        )
        with response:
            raise_for_status(response, ref.registry, scopes, f"manifest {target}")
            claimed = response.headers.get("Docker-Content-Digest")
        if claimed and claimed.split(":")[0] == digest.split(":")[0] and claimed != digest:
            raise DigestMismatch(f"registry {ref.registry} stored manifest {ref} as {claimed}")
        return digest

    def blob_exists(self, repo: Reference, digest: str, *, pushing: bool = False) -> bool:
        """HEAD the blob; `pushing` asks with push access, so that refused credentials are
        reported as a refused push, not a refused pull."""
        return self._blob_exists(repo, digest, _push(repo) if pushing else _pull(repo))

    def fetch_blob(self, repo: Reference, digest: str, out: BinaryIO) -> int:
        """Stream a blob into `out`, verifying it; the last chunk is held back until it checks.

        So `out` never holds the complete bad content. A broken connection is retried when
        `out` can be rewound (seek + truncate); otherwise it raises RegistryError.
        """
        _check_digest(digest)
        start = position(out)
        scopes = _pull(repo)
        subject = f"blob {repo.name}@{digest}"

        def attempt(deadline: Deadline) -> int:
            if start is not None:
                out.seek(start)
                out.truncate()
            response = self._transport.send(
                "GET",
                repo.registry,
                _blob_path(repo, digest),
                scopes=scopes,
                deadline=deadline,
                stream=True,
            )
            with response:
                raise_for_status(response, repo.registry, scopes, subject)
                try:
                    return _stream_verified(response, digest, out, subject)
                except RETRYABLE_ERRORS as err:
                    if start is None:
                        raise RegistryError(
                            f"registry {repo.registry}: download of {subject} broke off: "
                            f"{short_reason(err)}"
                        ) from err
                    raise Retry(short_reason(err)) from err

        return self._transport.run(repo.registry, attempt)

    def mount_blob(self, repo: Reference, digest: str, from_repo: Reference) -> bool:
        """Ask the registry to link a blob from another repository; False if it would not."""
        _check_digest(digest)
        if from_repo.registry != repo.registry:
            return False
        scopes = (*_push(repo), repository_scope(from_repo.repository, "pull"))
        params = {"mount": digest, "from": from_repo.repository}
        response = self._transport.request(
            "POST", repo.registry, uploads_path(repo), scopes=scopes, params=params
        )
        with response:
            if response.status_code == 201:
                return True
            raise_for_status(response, repo.registry, scopes, f"mount of {digest} into {repo}")
            location = location_of(response)
        if response.status_code == 202 and location:
            cancel_upload(self._transport, repo, location, scopes)
        return False

    def upload_blob(
        self,
        repo: Reference,
        digest: str,
        size: int,
        source: BinaryIO,
        *,
        chunk_size: int | None = None,
        check: bool = True,
    ) -> None:
        """Push `size` bytes of `source` as blob `digest`, unless the registry has it already
        (`check=False` skips that HEAD, for a caller that knows the blob is new).

        Monolithic (POST, then one PUT) without `chunk_size`, else PATCH chunks and a PUT.
        A failed attempt starts over with a new upload when `source` can seek back.
        """
        _check_digest(digest)
        if chunk_size is not None and chunk_size <= 0:
            raise InputError(f"chunk size must be positive, not {chunk_size}")
        scopes = _push(repo)
        if not check or not self._blob_exists(repo, digest, scopes):
            upload(
                self._transport, repo, digest, size, source, chunk_size=chunk_size, scopes=scopes
            )

    def push_blob(
        self,
        repo: Reference,
        digest: str,
        size: int,
        source: Callable[[], contextlib.AbstractContextManager[BinaryIO]],
    ) -> bool:
        """Make blob `digest` present in `repo` without a HEAD first; True if its bytes were
        uploaded, from `source()`, opened only then (see upload.mount_or_upload)."""
        _check_digest(digest)
        return mount_or_upload(self._transport, repo, digest, size, source, scopes=_push(repo))

    def upload_blob_stream(
        self, repo: Reference, chunks: Iterable[bytes], digest: Callable[[], str]
    ) -> None:
        """Push a blob whose digest is known only once `chunks` are exhausted (no HEAD first:
        there is no digest to ask about). See upload.upload_stream."""
        upload_stream(self._transport, repo, chunks, digest, scopes=_push(repo))

    def list_tags(self, repo: Reference, *, page_size: int | None = None) -> list[str]:
        """All tags, following Link: <...>; rel="next" pages (asking `page_size` at a time)."""
        scopes = _pull(repo)
        target = f"/v2/{repo.repository}/tags/list"
        params = {"n": str(page_size)} if page_size else None
        tags: list[str] = []
        seen: set[str] = set()
        while target and target not in seen:
            seen.add(target)
            response = self._transport.request(
                "GET", repo.registry, target, scopes=scopes, params=params
            )
            with response:
                if response.status_code == 404:
                    raise NotFound(f"repository unknown: {repo.name}")
                raise_for_status(response, repo.registry, scopes, f"tags of {repo.name}")
                try:
                    tags.extend(response.json().get("tags") or [])
                except (ValueError, AttributeError) as err:
                    raise RegistryError(
                        f"registry {repo.registry} sent a bad tag list for {repo.name}"
                    ) from err
                next_url = response.links.get("next", {}).get("url")
                target = urljoin(response.url, next_url) if next_url else ""
            params = None  # the next link carries its own query
        return tags

    def _blob_exists(self, repo: Reference, digest: str, scopes: Sequence[str]) -> bool:
        _check_digest(digest)
        response = self._transport.request(
            "HEAD", repo.registry, _blob_path(repo, digest), scopes=scopes
        )
        with response:
            if response.status_code == 404:
                return False
            raise_for_status(response, repo.registry, scopes, f"blob {repo.name}@{digest}")
        return True


def _read_limited(response: requests.Response, limit: int, registry: str, subject: str) -> bytes:
    """The whole body, or RegistryError as soon as it is known to exceed `limit` bytes."""
    declared = response.headers.get("Content-Length", "")
    too_big = declared.isdigit() and int(declared) > limit
    body = bytearray()
    for chunk in () if too_big else response.iter_content(64 << 10):
        body += chunk
        if len(body) > limit:
            too_big = True
            break
    if too_big:
        raise RegistryError(f"registry {registry}: {subject} is over {limit >> 20} MiB")
    return bytes(body)


def _stream_verified(response: requests.Response, digest: str, out: BinaryIO, subject: str) -> int:
    hasher = _hasher(digest)
    written = 0
    held: bytes = b""
    for chunk in response.iter_content(DOWNLOAD_CHUNK):
        if held:
            out.write(held)
            written += len(held)
        hasher.update(chunk)
        held = chunk
    actual = f"{digest.split(':', 1)[0]}:{hasher.hexdigest()}"
    if actual != digest:
        raise DigestMismatch(f"{subject}: content hashes to {actual}")
    out.write(held)
    return written + len(held)


def _check_manifest_digest(ref: Reference, data: bytes, claimed: str | None) -> str:
    if claimed:
        try:
            actual = _hash(claimed, data)
        except InputError:
            actual = claimed  # an algorithm we cannot compute: nothing to check against
        if actual != claimed:
            raise DigestMismatch(
                f"manifest {ref}: registry {ref.registry} says {claimed}, content is {actual}"
            )
    if ref.digest and _hash(ref.digest, data) != ref.digest:
        raise DigestMismatch(f"manifest {ref}: content hashes to {_sha256(data)}")
    return claimed or ref.digest or _sha256(data)


def _media_type(response: requests.Response, data: bytes) -> str:
    media_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
    if data and media_type in ("", "application/json", "text/plain"):
        with contextlib.suppress(ValueError, AttributeError):
            media_type = json.loads(data).get("mediaType") or media_type
    return media_type


def _check_digest(digest: str) -> None:
    Reference("x", "x").with_digest(digest)  # raises InputError naming what is wrong


def _hasher(digest: str) -> hashlib._Hash:
    algorithm = digest.split(":", 1)[0]
    if algorithm not in ("sha256", "sha384", "sha512"):
        raise InputError(f"unsupported digest algorithm in {digest!r}")
    return hashlib.new(algorithm)


def _hash(digest: str, data: bytes) -> str:
    """`data` hashed with the algorithm of `digest`, as a digest string."""
    hasher = _hasher(digest)
    hasher.update(data)
    return f"{digest.split(':', 1)[0]}:{hasher.hexdigest()}"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _accept(accept: Sequence[str]) -> dict[str, str]:
    return {"Accept": ", ".join(accept)}


def _pull(ref: Reference) -> tuple[str, ...]:
    return (repository_scope(ref.repository, "pull"),)


def _push(ref: Reference) -> tuple[str, ...]:
    return (repository_scope(ref.repository, "pull", "push"),)


def _manifest_path(ref: Reference) -> str:
    return f"/v2/{ref.repository}/manifests/{ref.reference}"


def _blob_path(repo: Reference, digest: str) -> str:
    return f"/v2/{repo.repository}/blobs/{digest}"
