"""HTTP to registries: http or https, authentication, retries with backoff, error translation."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
import urllib3

from buildgraph import __version__
from buildgraph.errors import (
    RegistryDown,
    RegistryError,
)
from buildgraph.registry.auth import Authenticator, CredentialStore
from buildgraph.registry.reference import DEFAULT_DOMAIN, DOCKER_HUB_API_HOST
from buildgraph.registry.responses import (
    error_code,
    find_cause,
    retry_after,
    short_reason,
    timed_out,
)
from buildgraph.registry.tls import Adapter, hostname_of, is_loopback, tls_handshake

T = TypeVar("T")
_CONNECT_TIMEOUT = 15.0  # seconds; never more than what is left of the total
_READ_TIMEOUT = 60.0  # seconds of silence from the server while reading
_PROBE_TIMEOUT = 5.0
RETRYABLE_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


class Retry(Exception):  # a signal to the retry loop, not an error
    """One attempt failed in a way that another attempt may fix."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay  # seconds the server asked for (Retry-After)


@dataclass(frozen=True, slots=True)
class Deadline:
    end: float  # time.monotonic() by which the whole operation must be done
    silence: float = _READ_TIMEOUT  # seconds a server may stay silent (connecting: at most 15)

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def timeout(self) -> tuple[float, float]:
        """(connect, read) for requests: a read timeout bounds silence, not the transfer."""
        left = max(self.remaining(), 0.05)
        return min(left, _CONNECT_TIMEOUT, self.silence), min(left, self.silence)


def api_host(registry: str) -> str:
    return DOCKER_HUB_API_HOST if registry == DEFAULT_DOMAIN else registry


class Transport:
    """One requests.Session shared by all threads; tokens and schemes cached under locks."""

    def __init__(
        self,
        *,
        credentials: CredentialStore | None,
        insecure: Iterable[str],
        ca_bundle: str | None,
        total_timeout: float,
        retries: int,
        backoff: float,
        silence: float | None = None,
    ) -> None:
        """`silence`: give a server that long to answer (or to take more of a request body),
        instead of 60 s, and do not retry a request it left unanswered (see best_effort)."""
        # No Python warning per request to a registry the user declared insecure, or to the
        # TLS probe of a loopback one (_probe): docker and skopeo print none either.
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self.session = requests.Session()
        # requests would read the proxy variables (and .netrc) on every request, which cost
        # more than a HEAD itself; they are read once per host here (see _proxies) instead.
        self.session.trust_env = False
        self.session.headers["User-Agent"] = f"buildgraph/{__version__}"
        default_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        # requests' verify=: a CA bundle or the default store
        self._trust: bool | str = ca_bundle or default_bundle or True
        self.session.verify = self._trust  # for token servers too
        adapter = Adapter(pool_connections=8, pool_maxsize=32, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self._auth = Authenticator(self.session, credentials)
        self._insecure = frozenset(insecure)
        self._total_timeout = total_timeout
        self._retries = retries
        self._backoff = backoff
        self._silence = silence
        self._lock = threading.Lock()
        self._schemes: dict[str, str] = {}
        self._probing = threading.Lock()  # held while a host's scheme is being found out
        self._unreachable: dict[str, float] = {}  # host -> when its last probe failed
        # registry -> why: it failed an operation after all its retries, so every later one
        # (and every retry in flight) fails at once instead of spending its own retries
        self._down: dict[str, str] = {}
        self._proxy_map: dict[str, dict[str, str]] = {}  # scheme://host -> proxies

    def close(self) -> None:
        self.session.close()

    def run(
        self, registry: str, attempt: Callable[[Deadline], T], *, budget: float | None = None
    ) -> T:
        """Call `attempt` until it succeeds, retrying `Retry` and connection errors, for at most
        the total timeout (or `budget` seconds, when shorter). The first operation to run out
        of retries marks the registry down for this transport: later ones fail at once."""
        self._raise_if_down(registry)
        total = self._total_timeout if budget is None else min(budget, self._total_timeout)
        deadline = self.deadline(total)
        failures = 0
        while True:
            try:
                return attempt(deadline)
            except Retry as retry:
                reason, delay, cause = retry.reason, retry.delay, retry
                if self._silence is not None and timed_out(retry):  # e.g. mid-download
                    failures = self._retries
            except RETRYABLE_ERRORS as err:
                if find_cause(err, ssl.SSLCertVerificationError):  # retrying will not help
                    raise RegistryError(f"registry {registry}: {short_reason(err)}") from err
                reason, delay, cause = short_reason(err), None, err
                if self._silence is not None and timed_out(err):
                    failures = self._retries  # silent that long: as good as down
            except requests.exceptions.InvalidHeader:  # its text would quote the header
                raise RegistryError(f"registry {registry}: invalid request header") from None
            except requests.RequestException as err:  # a bad URL, a redirect loop: no retry
                raise RegistryError(f"registry {registry}: {type(err).__name__}") from err
            failures += 1
            wait = delay if delay is not None else self._backoff * 2 ** (failures - 1)
            if failures > self._retries or wait >= deadline.remaining():
                with self._lock:
                    self._down.setdefault(registry, reason)
                raise RegistryError(f"registry {registry} unreachable: {reason}") from cause
            self._raise_if_down(registry)  # another operation ran out of retries meanwhile
            time.sleep(wait)
            self._raise_if_down(registry)

    def deadline(self, seconds: float) -> Deadline:
        """A deadline `seconds` from now, with this transport's silence timeout."""
        return Deadline(time.monotonic() + seconds, self._silence or _READ_TIMEOUT)

    def _raise_if_down(self, registry: str) -> None:
        with self._lock:
            reason = self._down.get(registry)
        if reason is not None:
            raise RegistryDown(f"registry {registry} unreachable earlier in this run: {reason}")

    def send(
        self,
        method: str,
        registry: str,
        target: str,
        *,
        scopes: Sequence[str],
        deadline: Deadline,
        headers: Mapping[str, str] | None = None,
        params: Any = None,
        data: Any = None,
        stream: bool = False,
        replayable: bool = True,
        authenticate: bool = True,
    ) -> requests.Response:
        """One exchange (plus one retry with a token after a 401); 5xx and 429 raise Retry.

        `target` is a path below the registry's base URL or an absolute URL (a Location).
        """
        host = api_host(registry)
        url = target if "://" in target else self._base_url(host, deadline) + target
        headers = dict(headers or {})
        timeout = deadline.timeout()
        options = {"params": params, "data": data, "stream": stream, "timeout": timeout}
        options["verify"] = self._verify(host)
        options["proxies"] = self._proxies(url)
        if authenticate:
            authorization = self._auth.authorization(registry, scopes, timeout[1])
            if authorization:
                headers["Authorization"] = authorization
        response = self.session.request(method, url, headers=headers, **options)
        if response.status_code == 401 and authenticate and replayable:
            challenge = response.headers.get("WWW-Authenticate", "")
            refused = headers.get("Authorization")
            authorization = self._auth.respond(registry, challenge, scopes, timeout[1], refused)
            if authorization is not None:
                response.close()
                headers["Authorization"] = authorization
                response = self.session.request(method, url, headers=headers, **options)
        if response.status_code == 429 or response.status_code >= 500:
            reason = f"HTTP {response.status_code} {response.reason}".rstrip()
            code = error_code(response)[0]
            delay = retry_after(response)
            response.close()
            raise Retry(f"{reason} ({code})" if code else reason, delay)
        return response

    def request(
        self,
        method: str,
        registry: str,
        target: str,
        *,
        budget: float | None = None,
        **options: Any,
    ) -> requests.Response:
        """`send` inside `run`: the usual call for a body-less or bytes-bodied request."""
        return self.run(
            registry,
            lambda deadline: self.send(method, registry, target, deadline=deadline, **options),
            budget=budget,
        )

    def remember_challenge(self, registry: str, header: str) -> None:
        self._auth.remember(registry, header)

    def _proxies(self, url: str) -> dict[str, str]:
        """HTTP(S)_PROXY / NO_PROXY for `url`'s host, as requests reads them, once per host."""
        origin = "/".join(url.split("/", 3)[:3])
        with self._lock:
            known = self._proxy_map.get(origin)
        if known is None:
            known = requests.utils.get_environ_proxies(origin)
            with self._lock:
                self._proxy_map[origin] = known
        return known

    def _base_url(self, host: str, deadline: Deadline) -> str:
        return f"{self._scheme(host, deadline)}://{host}"

    def _verify(self, host: str) -> bool | str:
        return False if self._listed_insecure(host) else self._trust

    def _scheme(self, host: str, deadline: Deadline) -> str:
        """https, except that local and insecure hosts fall back to http when TLS is absent."""
        if not (self._listed_insecure(host) or is_loopback(host)):
            return "https"
        with self._lock:
            known = self._schemes.get(host)
        if known:
            return known
        with self._probing:  # one probe per host: parallel first requests wait for its answer
            with self._lock:
                known = self._schemes.get(host)
                failed = self._unreachable.get(host, 0.0)
            if known:
                return known
            if time.monotonic() - failed < _PROBE_TIMEOUT:
                return "http"  # a probe just failed: do not make every waiter probe again
            return self._probe(host, deadline)

    def _probe(self, host: str, deadline: Deadline) -> str:
        """Does HOST speak TLS? Without a proxy in the way, one bare TLS handshake answers,
        with no certificate check: that would load the whole CA bundle first (~20-30 ms). The
        requests that follow check the certificate, and an untrusted one fails there with
        the same one-line error."""
        timeout = min(_PROBE_TIMEOUT, max(deadline.remaining(), 0.05))
        probe = f"https://{host}/v2/"
        try:
            if proxies := self._proxies(probe):  # ask the way the requests will go
                self.session.get(probe, timeout=timeout, verify=False, proxies=proxies).close()
            else:
                tls_handshake(host, timeout)
            scheme = "https"
        except (requests.exceptions.SSLError, ssl.SSLError):
            scheme = "http"  # a plain-HTTP server answered our TLS handshake with garbage
        except (*RETRYABLE_ERRORS, OSError):
            with self._lock:
                self._unreachable[host] = time.monotonic()
            return "http"  # down right now: decide on a later attempt
        with self._lock:
            self._schemes[host] = scheme
        return scheme

    def _listed_insecure(self, host: str) -> bool:
        hostname = hostname_of(host)
        if host in self._insecure or hostname in self._insecure:
            return True
        try:
            address = ipaddress.ip_address(hostname)
        except ValueError:
            return False
        for entry in self._insecure:
            with contextlib.suppress(ValueError):
                if "/" in entry and address in ipaddress.ip_network(entry, strict=False):
                    return True
        return False
