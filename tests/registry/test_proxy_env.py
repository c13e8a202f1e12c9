"""HTTP(S)_PROXY and NO_PROXY are honoured, though read once per host rather than per request."""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from registry_server import RegistryServer

from buildgraph.image import mediatypes as mt
from buildgraph.registry.client import RegistryClient
from buildgraph.registry.reference import parse_reference


class _ForwardProxy(http.server.BaseHTTPRequestHandler):
    """A plain-HTTP forward proxy: absolute-URI requests are relayed and counted."""

    seen: list[str] = []

    def _relay(self) -> None:
        type(self).seen.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in ("host", "proxy-connection")
        }
        request = urllib.request.Request(self.path, data=body, headers=headers, method=self.command)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            response = opener.open(request, timeout=10)
        except urllib.error.HTTPError as err:
            response = err
        data = response.read()
        self.send_response(response.status)
        for key, value in response.headers.items():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = _relay

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[str]:
    _ForwardProxy.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ForwardProxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_requests_go_through_the_proxy_unless_no_proxy_names_the_host(
    registry: RegistryServer, proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = parse_reference(f"{registry.host}/proxy/test:missing")
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("http_proxy", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with RegistryClient(total_timeout=10.0) as client:
        assert client.head_manifest(ref, accept=mt.MANIFESTS) is None
        assert client.head_manifest(ref, accept=mt.MANIFESTS) is None
    relayed = [line for line in _ForwardProxy.seen if "/manifests/missing" in line]
    assert len(relayed) == 2 and relayed[0].startswith(f"HEAD http://{registry.host}/v2/")
    _ForwardProxy.seen.clear()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with RegistryClient(total_timeout=10.0) as client:
        assert client.head_manifest(ref, accept=mt.MANIFESTS) is None
    assert _ForwardProxy.seen == []
