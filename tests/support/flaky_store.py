"""A TCP forwarder in front of a real S3 server that can stop answering: every request, or only object reads.

Not a fake of the store: every request it lets through reaches SeaweedFS and every answer comes back byte for
byte. It reads the HTTP request heads (path-style S3 with no request bodies, as source reads are) to tell a
listing (``GET /bucket?list-type=2...``) from an object read (``HEAD`` or ``GET /bucket/key``), and cuts the
connection of a request it refuses, as a store that went away does.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from enum import Enum
from urllib.parse import urlsplit

from app.cli.embedded import LOCALHOST


class Mode(Enum):
    UP = "up"
    DOWN = "down"  # every connection is cut
    OBJECTS_DOWN = "objects down"  # listings are answered, object reads cut


class FlakyStore:
    """Listens on ``port``; forwards to ``target`` (an http:// endpoint) as ``mode`` allows."""

    def __init__(self, target: str, mode: Mode = Mode.UP) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or LOCALHOST, parts.port or 80)
        self.mode = mode
        self.refused = 0  # requests (or connections) cut so far
        self._listener = socket.create_server((LOCALHOST, 0))
        self.port = int(self._listener.getsockname()[1])
        self.endpoint_url = f"http://{LOCALHOST}:{self.port}"
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="flaky-store", daemon=True).start()

    def set(self, mode: Mode) -> None:
        self.mode = mode

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._open:
                _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=30)
        except OSError:
            _close(client)
            return
        with self._lock:
            self._open.update((client, upstream))
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        buffered = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffered:
                    data = client.recv(65536)
                    if not data:
                        return
                    buffered += data
                head, _, buffered = buffered.partition(b"\r\n\r\n")
                if not self._allowed(head):
                    self.refused += 1
                    return
                body_length = _content_length(head)
                while len(buffered) < body_length:
                    data = client.recv(65536)
                    if not data:
                        return
                    buffered += data
                upstream.sendall(head + b"\r\n\r\n" + buffered[:body_length])
                buffered = buffered[body_length:]
        except OSError:
            return
        finally:
            _close(client)
            _close(upstream)

    def _allowed(self, head: bytes) -> bool:
        if self.mode is Mode.UP:
            return True
        if self.mode is Mode.DOWN:
            return False
        method, path = head.split(b"\r\n", 1)[0].split(b" ")[:2]
        key = path.split(b"?", 1)[0].strip(b"/").partition(b"/")[2]
        return method == b"GET" and not key  # a listing of the bucket


@contextmanager
def flaky_store(target: str, mode: Mode = Mode.UP) -> Iterator[FlakyStore]:
    store = FlakyStore(target, mode)
    try:
        yield store
    finally:
        store.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
