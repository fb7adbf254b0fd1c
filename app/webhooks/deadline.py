"""An HTTP transport whose every connect, read and write ends by one deadline: a delivery attempt's total time.

httpx's timeouts bound each network operation, not a request: a receiver that answers its status line and
then one header line every few seconds never trips a read timeout, and held a webhooks worker (and, under
``embedq up``, a slot every queue shares) for as long as it kept dripping. Here each operation gets what is
left of the attempt's budget (or its own timeout, if shorter) and one past the deadline fails at once, so
an attempt lasts at most EMBEDQ_WEBHOOK_TIMEOUT_S however the receiver answers.
"""

from __future__ import annotations

import time
import typing

import httpcore
import httpx


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(self._deadline, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(self._deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: typing.Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        left = _left(self._deadline, timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, left), self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, deadline: float) -> None:
        self._backend = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(self._deadline, timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, left, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: typing.Iterable[typing.Any] | None = None
    ) -> httpcore.NetworkStream:
        left = _left(self._deadline, timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, left, socket_options), self._deadline)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _left(deadline: float, timeout: float | None, error: type[Exception]) -> float:
    """Return the seconds an operation may take: its own timeout or what is left before ``deadline``."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the attempt's time (EMBEDQ_WEBHOOK_TIMEOUT_S) ran out")
    return left if timeout is None else min(timeout, left)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's own transport (TLS verified, errors mapped to httpx's) over a network that stops at ``deadline``,
    a ``time.monotonic()`` value; one per attempt."""

    def __init__(self, deadline: float) -> None:
        super().__init__()
        # httpx builds its connection pool without a way to pass a network backend: the same pool, with one.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), network_backend=_DeadlineBackend(deadline)
        )
