"""A real HTTP server on 127.0.0.1 that plays scripted answers, then proxies to a registry."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


@dataclass
class Answer:
    """What to do with the next request whose "METHOD path" contains `match`."""

    match: str
    status: int = 0  # 0: proxy to the upstream registry
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    cut_after: int | None = None  # proxy, but close the connection after this many body bytes
    times: int = 1


class ScriptedServer:
    def __init__(self, upstream: str | None, script: list[Answer]) -> None:
        self.upstream = upstream
        self.script = script
        self.seen: list[str] = []  # "METHOD path" of every request
        self.headers: list[dict[str, str]] = []  # and its headers
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_answer(self, request_line: str, headers: dict[str, str]) -> Answer | None:
        with self._lock:
            self.seen.append(request_line)
            self.headers.append(headers)
            for answer in self.script:
                if answer.times > 0 and answer.match in request_line:
                    answer.times -= 1
                    return answer
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                answer = server._next_answer(f"{self.command} {self.path}", dict(self.headers))
                if answer and answer.status:
                    self._send(answer.status, answer.headers, answer.body)
                    return
                status, headers, data = self._proxy(body)
                if answer and answer.cut_after is not None:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: answer.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(status, headers, data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def _proxy(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
                assert server.upstream, "no upstream to proxy to"
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                response = requests.request(
                    self.command,
                    server.upstream + self.path,
                    headers=headers,
                    data=body or None,
                    allow_redirects=False,
                    stream=True,
                    timeout=30,
                )
                data = response.raw.read(decode_content=False)
                kept = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP}
                if self.command == "HEAD":
                    kept["Content-Length"] = response.headers.get("Content-Length", "0")
                return response.status_code, kept, data

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        return Handler
