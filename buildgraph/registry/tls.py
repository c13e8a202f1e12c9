"""TLS to registries: one shared SSLContext per CA bundle, a bare handshake probe, and the
host:port parsing they need."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import threading
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH, extract_zipped_paths
from urllib3.util.ssl_ import create_urllib3_context

from buildgraph.errors import InputError

UPLOAD_BLOCK = 1 << 20  # bytes per read of a request body
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class Adapter(HTTPAdapter):
    """Request bodies (blob uploads) are read and sent 1 MiB at a time, not 16 KiB: a 50 MB
    export is then 50 Python-level reads and sends instead of 3,000.

    Verified TLS connections share one SSLContext per CA bundle, loaded on first use: given a
    bundle's path, urllib3 would load it again for every new connection (~20 ms of CPU each,
    so eight parallel downloads from an HTTPS registry paid for eight loads)."""

    def __init__(self, **options: Any) -> None:
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._contexts_lock = threading.Lock()
        super().__init__(**options)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, blocksize=UPLOAD_BLOCK, **kwargs)

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: bool | str, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        if _verified_tls(host_params["scheme"], verify, cert):
            pool_kwargs.pop("ca_certs", None)
            pool_kwargs.pop("ca_cert_dir", None)
            pool_kwargs["ssl_context"] = self._trusting(_bundle(verify))
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: bool | str, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)
        if _verified_tls(url.split(":", 1)[0].lower(), verify, cert):
            conn.ca_certs = conn.ca_cert_dir = None  # the pool's shared context holds them

    def _trusting(self, bundle: str) -> ssl.SSLContext:
        with self._contexts_lock:
            context = self._contexts.get(bundle)
            if context is None:
                context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
                try:
                    if os.path.isdir(bundle):
                        context.load_verify_locations(capath=bundle)
                    else:
                        context.load_verify_locations(cafile=bundle)
                except (OSError, ssl.SSLError) as err:
                    reason = err.strerror or type(err).__name__
                    raise InputError(f"TLS CA bundle {bundle}: {reason}") from None
                self._contexts[bundle] = context
        return context


def _verified_tls(scheme: str, verify: bool | str, cert: Any) -> bool:
    """A connection the shared contexts serve: https, verified, no client certificate."""
    return scheme == "https" and verify is not False and cert is None


def _bundle(verify: bool | str) -> str:
    """The CA bundle requests would load for `verify`: certifi's for True, else the path."""
    return extract_zipped_paths(DEFAULT_CA_BUNDLE_PATH) if verify is True else str(verify)


def tls_handshake(host: str, timeout: float) -> None:
    """Connect to "host[:port]" and complete a TLS handshake, checking nothing else; raises
    ssl.SSLError when the server does not speak TLS, OSError when it cannot be reached."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only "is it TLS?" is asked here
    hostname = hostname_of(host)
    with (
        socket.create_connection((hostname, port_of(host)), timeout=timeout) as sock,
        context.wrap_socket(sock, server_hostname=hostname),
    ):
        pass


def port_of(host: str) -> int:
    """The port of "host:port" or "[v6]:port"; 443 (https) when none is given."""
    rest = host.rsplit("]", 1)[1] if host.startswith("[") else host
    return int(rest.rsplit(":", 1)[1]) if rest.count(":") == 1 else 443


def hostname_of(host: str) -> str:
    """The host of "host:port" or "[v6]:port"."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    hostname = hostname_of(host)
    if hostname == "localhost":
        return True
    try:
        address = ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return any(address in network for network in _LOOPBACK)
