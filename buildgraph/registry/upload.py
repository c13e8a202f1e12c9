"""Blob uploads: one monolithic PUT or chunked PATCHes, cancelled when anything fails."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO
from urllib.parse import urljoin

import requests

from buildgraph.errors import InputError, RegistryError
from buildgraph.registry.reference import Reference
from buildgraph.registry.responses import raise_for_status, short_reason
from buildgraph.registry.transport import RETRYABLE_ERRORS, Deadline, Retry, Transport

_OCTET_STREAM = "application/octet-stream"
_CANCEL_TIMEOUT = 10.0


def upload(
    transport: Transport,
    repo: Reference,
    digest: str,
    size: int,
    source: BinaryIO,
    *,
    chunk_size: int | None,
    scopes: Sequence[str],
    started: str = "",
) -> None:
    """Push `size` bytes of `source`; a failed attempt starts a new upload if `source` seeks.
    `started`: the Location of an upload session already open (a mount the registry turned
    into an upload), used by the first attempt instead of POSTing a new one."""
    start = position(source)
    opened = [started] if started else []

    def attempt(deadline: Deadline) -> None:
        if start is not None:
            source.seek(start)
        reader = _BoundedReader(source, size, digest)
        given = opened.pop() if opened else ""  # a retry opens a session of its own
        try:
            with upload_session(transport, repo, scopes, deadline, given) as location:
                if chunk_size is None:
                    _put(transport, repo, location, digest, reader, scopes, deadline)
                else:
                    location = _patch_chunks(
                        transport, repo, location, reader, chunk_size, scopes, deadline
                    )
                    _put(transport, repo, location, digest, None, scopes, deadline)
        except (Retry, *RETRYABLE_ERRORS) as err:
            if start is None and reader.consumed:
                reason = err.reason if isinstance(err, Retry) else short_reason(err)
                raise RegistryError(
                    f"registry {repo.registry}: upload of {digest} to {repo.name} failed "
                    f"and its source cannot be read again: {reason}"
                ) from err
            raise

    transport.run(repo.registry, attempt)


def mount_or_upload(
    transport: Transport,
    repo: Reference,
    digest: str,
    size: int,
    source: Callable[[], contextlib.AbstractContextManager[BinaryIO]],
    *,
    scopes: Sequence[str],
) -> bool:
    """Make blob `digest` present in `repo`; True if its bytes were uploaded (`source` opens
    them, only then: a blob the registry has need not be here).

    One POST asks to mount the blob from `repo` itself, which asks "is it here already?":
    201 means it is. A registry that cannot mount it opens an upload session instead (202, as
    the distribution spec says), and the bytes go into that session: a new blob costs a POST
    and a PUT, and the HEAD that would have asked first is saved. A registry that answers
    the mount with another 2xx, or refuses it (a 4xx other than 401, 403 and 429), gets a plain
    upload."""
    params = {"mount": digest, "from": repo.repository}
    response = transport.request(
        "POST", repo.registry, uploads_path(repo), scopes=scopes, params=params
    )
    with response:
        status = response.status_code
        if status == 201:
            return False
        if not 400 <= status < 500 or status in (401, 403, 429):
            raise_for_status(response, repo.registry, scopes, f"upload to {repo.name}")
        location = location_of(response) if status == 202 else ""
    with contextlib.ExitStack() as stack:
        try:
            data = stack.enter_context(source())
        except BaseException:
            if location:  # the session the mount opened, never used
                cancel_upload(transport, repo, location, scopes)
            raise
        upload(
            transport, repo, digest, size, data, chunk_size=None, scopes=scopes, started=location
        )
    return True


def upload_stream(
    transport: Transport,
    repo: Reference,
    chunks: Iterable[bytes],
    digest: Callable[[], str],
    *,
    scopes: Sequence[str],
) -> None:
    """Push a blob while it is being made: one PATCH whose body is `chunks` as they come
    (chunked transfer encoding), then PUT ?digest= with `digest()`, known once they ended.
    Chunks cannot be read twice: once the PATCH has begun, a failure is a RegistryError for a
    caller that can upload the finished blob instead."""
    started = False

    def body() -> Iterator[bytes]:
        nonlocal started
        started = True
        yield from chunks

    def attempt(deadline: Deadline) -> None:
        try:
            with upload_session(transport, repo, scopes, deadline) as location:
                response = transport.send(
                    "PATCH",
                    repo.registry,
                    location,
                    scopes=scopes,
                    deadline=deadline,
                    headers={"Content-Type": _OCTET_STREAM},
                    data=body(),
                    replayable=False,
                )
                with response:
                    raise_for_status(response, repo.registry, scopes, "streamed blob")
                    location = location_of(response) or location
                _put(transport, repo, location, digest(), None, scopes, deadline)
        except (Retry, *RETRYABLE_ERRORS) as err:
            if started:
                reason = err.reason if isinstance(err, Retry) else short_reason(err)
                raise RegistryError(
                    f"registry {repo.registry}: streamed upload to {repo.name} failed: {reason}"
                ) from err
            raise

    transport.run(repo.registry, attempt)


@contextlib.contextmanager
def upload_session(
    transport: Transport,
    repo: Reference,
    scopes: Sequence[str],
    deadline: Deadline,
    location: str = "",
) -> Iterator[str]:
    """POST a new upload (unless `location` is one already open) and yield its Location;
    cancel it (DELETE) if anything fails."""
    if not location:
        response = transport.send(
            "POST", repo.registry, uploads_path(repo), scopes=scopes, deadline=deadline
        )
        with response:
            raise_for_status(response, repo.registry, scopes, f"upload to {repo.name}")
            location = location_of(response)
    if not location:
        raise RegistryError(f"registry {repo.registry} started an upload without a Location")
    try:
        yield location
    except requests.Timeout:
        raise  # a server that left a request unanswered would leave the DELETE so too
    except BaseException:
        cancel_upload(transport, repo, location, scopes)
        raise


def cancel_upload(
    transport: Transport, repo: Reference, location: str, scopes: Sequence[str]
) -> None:
    """Best effort: an abandoned upload is garbage the registry collects anyway."""
    with contextlib.suppress(RegistryError, requests.RequestException, Retry):
        deadline = transport.deadline(_CANCEL_TIMEOUT)
        transport.send("DELETE", repo.registry, location, scopes=scopes, deadline=deadline).close()


def location_of(response: requests.Response) -> str:
    """The Location header made absolute (registries may send a relative one)."""
    location = response.headers.get("Location", "")
    return urljoin(response.url, location) if location else ""


def uploads_path(repo: Reference) -> str:
    return f"/v2/{repo.repository}/blobs/uploads/"


def position(stream: BinaryIO) -> int | None:
    """Where `stream` is, if it can be rewound there for another attempt."""
    try:
        return stream.tell() if stream.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None


def _put(
    transport: Transport,
    repo: Reference,
    location: str,
    digest: str,
    body: _BoundedReader | None,
    scopes: Sequence[str],
    deadline: Deadline,
) -> None:
    """The closing PUT ?digest=, with the whole blob or (after PATCHes) with no body."""
    size = len(body) if body is not None else 0
    response = transport.send(
        "PUT",
        repo.registry,
        location,
        scopes=scopes,
        deadline=deadline,
        params={"digest": digest},
        headers={"Content-Type": _OCTET_STREAM, "Content-Length": str(size)},
        data=body,
        replayable=body is None,  # a 401 cannot be answered by sending a spent stream again
    )
    with response:
        raise_for_status(response, repo.registry, scopes, f"blob {digest}")


def _patch_chunks(
    transport: Transport,
    repo: Reference,
    location: str,
    reader: _BoundedReader,
    chunk_size: int,
    scopes: Sequence[str],
    deadline: Deadline,
) -> str:
    """PATCH `reader` in chunks with Content-Range; returns the Location for the final PUT."""
    size = len(reader)
    for offset in range(0, size, chunk_size):
        length = min(chunk_size, size - offset)
        headers = {
            "Content-Type": _OCTET_STREAM,
            "Content-Length": str(length),
            "Content-Range": f"{offset}-{offset + length - 1}",
        }
        response = transport.send(
            "PATCH",
            repo.registry,
            location,
            scopes=scopes,
            deadline=deadline,
            headers=headers,
            data=reader.slice(length),
            replayable=False,
        )
        with response:
            raise_for_status(response, repo.registry, scopes, f"chunk at {offset} of blob")
            location = location_of(response) or location
    return location


class _BoundedReader:
    """Exactly `size` bytes of `source` as a request body; refuses a source that ends early.

    requests takes Content-Length from __len__ and urllib3 calls read() in blocks; there is
    deliberately no __iter__ and no tell(), which would make requests send it chunked.
    """

    def __init__(self, source: BinaryIO, size: int, digest: str) -> None:
        self._source = source
        self._left = size
        self._digest = digest
        self.consumed = 0  # bytes handed out; once >0 a retry needs a seekable source

    def __len__(self) -> int:
        return self._left

    def read(self, size: int = -1) -> bytes:
        want = self._left if size is None or size < 0 else min(size, self._left)
        data = self._source.read(want) if want else b""
        if want and not data:
            raise InputError(f"blob {self._digest}: source ended {self._left} bytes early")
        self._left -= len(data)
        self.consumed += len(data)
        return data

    def slice(self, size: int) -> _BoundedReader:
        """The next `size` bytes as their own body (one PATCH chunk)."""
        self._left -= size
        self.consumed += size
        return _BoundedReader(self._source, size, self._digest)
