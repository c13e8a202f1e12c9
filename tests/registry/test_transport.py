"""Finding out whether a loopback registry speaks TLS: one bare handshake, no CA bundle loaded."""

from __future__ import annotations

import ssl
import time

import pytest
from registry_server import RegistryServer, free_port

from buildgraph.registry.transport import Deadline, Transport, _port


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
    assert _port(host) == port
