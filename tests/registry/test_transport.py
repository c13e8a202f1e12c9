"""Finding out whether a loopback registry speaks TLS (one bare handshake, no CA bundle loaded),
and verified TLS connections sharing one CA store."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from registry_server import RegistryServer, free_port

from buildgraph.errors import InputError
from buildgraph.registry.client import RegistryClient
from buildgraph.registry.tls import port_of
from buildgraph.registry.transport import Deadline, Transport


def _transport() -> Transport:
    return Transport(
        credentials=None, insecure=(), ca_bundle=None, total_timeout=10, retries=0, backoff=0.1
    )


def test_the_probe_tells_tls_from_plain_http_without_loading_a_ca_bundle(
    registry: RegistryServer, tls_htpasswd_registry: RegistryServer, monkeypatch
) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the scheme probe loaded a CA bundle")

    monkeypatch.setattr(ssl.SSLContext, "load_default_certs", refuse)
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", refuse)
    transport = _transport()
    deadline = Deadline(time.monotonic() + 10)
    assert transport._scheme(registry.host, deadline) == "http"
    assert transport._scheme(tls_htpasswd_registry.host, deadline) == "https"


def test_parallel_tls_connections_load_the_ca_bundle_once(
    tls_htpasswd_registry: RegistryServer, tls_ca: tuple[Path, tuple[Path, Path]], monkeypatch
) -> None:
    counts = {"loads": 0, "connections": 0}
    lock = threading.Lock()
    load, wrap = ssl.SSLContext.load_verify_locations, ssl.SSLContext.wrap_socket

    def counted(name: str, real: Callable[..., object]) -> Callable[..., object]:
        def call(*args: object, **kwargs: object) -> object:
            with lock:
                counts[name] += 1
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted("loads", load))
    monkeypatch.setattr(ssl.SSLContext, "wrap_socket", counted("connections", wrap))
    host = tls_htpasswd_registry.host
    with RegistryClient(ca_bundle=str(tls_ca[0])) as client:
        start = threading.Barrier(8)

        def ping(_: int) -> None:
            start.wait()  # all at once, so they need connections of their own
            client.ping(host)  # a verified handshake each; the 401 still means "a registry"

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(ping, range(8)))
    assert counts["connections"] >= 4  # the probe's handshake and several pooled connections
    assert counts["loads"] == 1


def test_a_missing_ca_bundle_is_one_clear_error(
    tls_htpasswd_registry: RegistryServer, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.pem"
    with RegistryClient(ca_bundle=str(missing)) as client, pytest.raises(InputError) as caught:
        client.ping(tls_htpasswd_registry.host)
    assert str(caught.value) == f"TLS CA bundle {missing}: No such file or directory"


def test_an_unreachable_host_is_probed_again_later(registry: RegistryServer) -> None:
    transport = _transport()
    nobody = f"127.0.0.1:{free_port()}"  # no one listens there
    assert transport._scheme(nobody, Deadline(time.monotonic() + 10)) == "http"
    assert nobody not in transport._schemes  # "http" for now; not remembered
    assert transport._scheme(registry.host, Deadline(time.monotonic() + 10)) == "http"
    assert transport._schemes[registry.host] == "http"


@pytest.mark.parametrize(
    ("host", "port"),
    [("127.0.0.1:5000", 5000), ("reg.example", 443), ("[::1]:5001", 5001), ("[::1]", 443)],
)
def test_port_of_a_registry_host(host: str, port: int) -> None:
    assert port_of(host) == port
