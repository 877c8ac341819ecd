"""A counting TCP relay on 127.0.0.1: what a client really asked an HTTP server for, and how many bytes came back.

Put between a client and S3Proxy (``CountingRelay(endpoint)``, then give the client
``relay.endpoint``), it counts the HTTP request lines by method (``HEAD``, ``GET``, ...) and the
bytes the server sent, so a test or benchmark can tell ranged reads from whole-object downloads
from the wire, not from the client's own account. Plain HTTP only (S3Proxy on 127.0.0.1). Threads
are daemons; :meth:`close` stops accepting and closes every connection.
"""

from __future__ import annotations

import collections
import re
import socket
import threading
from urllib.parse import urlsplit

_REQUEST_LINE = re.compile(rb"(?:^|\r\n)(GET|HEAD|PUT|POST|DELETE) /")


class CountingRelay:
    def __init__(self, endpoint: str) -> None:
        target = urlsplit(endpoint)
        assert target.hostname and target.port, endpoint
        self._target = (target.hostname, target.port)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self.requests: collections.Counter[str] = collections.Counter()
        self.bytes_down = 0
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_down = 0

    def snapshot(self) -> tuple[dict[str, int], int]:
        with self._lock:
            return dict(self.requests), self.bytes_down

    def close(self) -> None:
        """Stop accepting and close every connection (the client reconnects if it is used again)."""
        self._server.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        # A request line split across two reads would be missed; clients send a request's head in
        # one write, which arrives in one read on loopback.
        try:
            while data := src.recv(1 << 16):
                with self._lock:
                    if up:
                        for method in _REQUEST_LINE.findall(data):
                            self.requests[method.decode()] += 1
                    else:
                        self.bytes_down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
