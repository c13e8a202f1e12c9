"""Registry answers: a non-2xx response or a connection failure as one of our errors."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from typing import Any

import requests
import urllib3

from buildgraph.errors import AuthError, DigestMismatch, NotFound, RegistryError
from buildgraph.registry.auth import describe_scopes


def retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # an HTTP date, or nothing: use our own backoff


def error_code(response: requests.Response) -> tuple[str, str]:
    """The first (code, message) of a registry's {"errors": [...]} body, or ("", "")."""
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        return str(first.get("code", "")), " ".join(str(first.get("message", "")).split())[:200]
    except (ValueError, AttributeError, IndexError, TypeError, requests.RequestException):
        return "", ""


def raise_for_status(
    response: requests.Response, registry: str, scopes: Sequence[str], subject: str
) -> None:
    """Translate a non-2xx answer; `subject` names what was asked for, e.g. "manifest x:1"."""
    status = response.status_code
    if status < 300:
        return
    code, message = error_code(response)
    response.close()
    if status == 401:
        raise AuthError(describe_scopes(registry, scopes))
    if status == 403:
        raise AuthError(f"{describe_scopes(registry, scopes)}: access denied")
    if code in ("DIGEST_INVALID", "SIZE_INVALID"):
        raise DigestMismatch(f"registry {registry} rejected {subject}: {code}: {message}")
    detail = f"{code}: {message}" if code else f"HTTP {status} {response.reason}".rstrip()
    if status == 404:
        raise NotFound(f"{subject} not found on {registry} ({detail})")
    raise RegistryError(f"registry {registry} refused {subject}: {detail}")


def short_reason(err: BaseException) -> str:
    """One line about a connection failure, without URLs, headers or traceback text."""
    if isinstance(err, requests.Timeout):
        return "timed out"
    verify = find_cause(err, ssl.SSLCertVerificationError)
    if verify is not None:
        return f"TLS certificate not trusted ({verify.verify_message})"
    if isinstance(err, requests.exceptions.SSLError):
        return "TLS handshake failed"
    if isinstance(err, requests.exceptions.ChunkedEncodingError):
        return "connection broken while reading the response"
    os_error = find_cause(err, OSError, lambda found: bool(found.strerror))
    if os_error is not None:
        return os_error.strerror.lower()
    if "RemoteDisconnected" in repr(err) or "Connection aborted" in str(err):
        return "connection closed by the server"
    return type(err).__name__


def timed_out(err: BaseException) -> bool:
    """A server left us waiting (requests wraps a read timeout mid-body in ConnectionError)."""
    return isinstance(err, requests.Timeout) or bool(
        find_cause(err, urllib3.exceptions.TimeoutError) or find_cause(err, TimeoutError)
    )


def find_cause(
    err: BaseException, kind: type[BaseException], accept: Callable[[Any], bool] = bool
) -> Any:
    """The first exception of `kind` in err's cause/context/args chain (urllib3 nests them)."""
    seen: set[int] = set()
    stack: list[object] = [err]
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, kind) and item is not err and accept(item):
            return item
        stack.extend([item.__cause__, item.__context__, getattr(item, "reason", None)])
        stack.extend(item.args)
    return None
