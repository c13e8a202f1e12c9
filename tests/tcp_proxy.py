"""A real TCP proxy on 127.0.0.1 that can cut connections, to test network faults."""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class CuttingProxy:
    """Forwards to `target_port`; a response stream is cut after `cut_after` bytes, and the
    first request stream to pass `cut_request_after` bytes is cut there (later ones are not)."""

    target_port: int
    cut_after: int | None = None
    cut_request_after: int | None = None
    listener: socket.socket = field(init=False)
    port: int = field(init=False)
    cuts: int = 0
    request_cuts: int = 0

    def __post_init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            request_limit = self.cut_request_after if self.request_cuts == 0 else None
            threading.Thread(
                target=self._pipe, args=(client, upstream, request_limit, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pipe, args=(upstream, client, self.cut_after), daemon=True
            ).start()

    def _pipe(
        self, source: socket.socket, dest: socket.socket, limit: int | None, request: bool = False
    ) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                if limit is not None and sent + len(data) > limit:
                    if request and self.request_cuts:
                        limit = None  # another connection was cut first: only one is
                    else:
                        dest.sendall(data[: limit - sent])
                        self.cuts += 1
                        self.request_cuts += request
                        break
                dest.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, dest):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
