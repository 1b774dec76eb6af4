"""A Redis that loses a reply: a proxy on loopback that lets a command run on the
real server, then breaks the connection before its answer gets back, as a
network reset or a failover can. The client sees a ConnectionError (or, in a
WATCH transaction, a WatchError) for a command Redis has run, and redis-py's
retry sends it again.
"""
from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

from service.embedded_redis import free_port


class ReplyCutter:
    """Forwards every connection to the Redis at `redis_url`; `cut_reply_to(marker)`
    has the next request that contains `marker` run, and its reply never arrive
    (the next `times` such requests: a client's retry can be cut as well)."""

    def __init__(self, redis_url: str):
        parts = urlsplit(redis_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}{parts.path}"
        self._marker: tuple[bytes, ...] | None = None
        self._times = 0
        self._lock = threading.Lock()
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_reply_to(self, marker: bytes | tuple[bytes, ...], times: int = 1) -> None:
        """`marker`, or every one of several, in one request (a transaction is sent as one)."""
        with self._lock:
            self._marker, self._times = (marker if isinstance(marker, tuple) else (marker,)), times

    def close(self) -> None:
        self._listener.close()

    def __enter__(self) -> "ReplyCutter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._upstream)
            cut = threading.Event()
            threading.Thread(target=self._requests, args=(client, server, cut), daemon=True).start()
            threading.Thread(target=self._replies, args=(server, client, cut), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket, cut: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    if self._marker is not None and all(part in data for part in self._marker):
                        self._times -= 1
                        if not self._times:
                            self._marker = None
                        cut.set()  # the reply that comes back next is not delivered
                server.sendall(data)
        except OSError:
            pass
        _close(client, server)

    def _replies(self, server: socket.socket, client: socket.socket, cut: threading.Event) -> None:
        try:
            while data := server.recv(65536):
                if cut.is_set():  # Redis has run the command: break the line instead of answering
                    self.cuts += 1
                    break
                client.sendall(data)
        except OSError:
            pass
        _close(client, server)


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
