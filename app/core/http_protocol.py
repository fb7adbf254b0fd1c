"""uvicorn's HTTP protocol with the read deadlines uvicorn lacks: a request's head, and a body that stalls.

uvicorn closes a keep-alive connection that stays idle after a response, but a client that connects and
drips its request line and headers a byte at a time (or stops half-way through a body) holds a connection
and a file descriptor forever. This protocol gives the head ``api_header_timeout_s`` from the connection's
start (or the previous response's end), and the body ``api_body_idle_timeout_s`` between two reads, then
closes the connection. Reads the server itself paused (the app is slow to consume an upload) never count.

A request uvicorn cannot parse (an empty header name, a bad byte in a header value, a broken request line)
is answered 400 as every other error is, JSON in the path's error shape (``error_body``, given by the app:
OpenAI's under /v1) with the parser's reason and code ``invalid_http``, where uvicorn sends a plain-text
"Invalid HTTP request received.". The API runs with ``--http app.main:HttpProtocol`` (see ``embedq api``),
this class given the app's error shape.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.core.config import get_settings
from app.core.limits import ErrorBody


def _plain_error_body(path: str, status: int, message: str, code: str) -> dict[str, Any]:
    return {"detail": message, "code": code, "param": None}


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes connections whose request head or body stalls past its deadline, and
    answers an unparsable request in JSON."""

    error_body: ErrorBody = staticmethod(_plain_error_body)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self._header_timeout = settings.api_header_timeout_s
        self._body_idle_timeout = settings.api_body_idle_timeout_s
        self._read_deadline: asyncio.TimerHandle | None = None

    def _arm(self, timeout: float) -> None:
        self._disarm()
        self._read_deadline = self.loop.call_later(timeout, self._read_timed_out, timeout)

    def _disarm(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self, timeout: float) -> None:
        self._read_deadline = None
        if self.flow is not None and self.flow.read_paused:
            self._arm(timeout)  # the app has not consumed what arrived: the client is not the slow one
            return
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self._header_timeout)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self._body_idle_timeout)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._arm(self._body_idle_timeout)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # The next request's head starts arriving now (uvicorn's keep-alive timer covers the idle part).
        if not self.transport.is_closing():
            self._arm(max(self._header_timeout, self.timeout_keep_alive))

    def send_400_response(self, msg: str) -> None:
        # uvicorn calls this inside its ``except httptools.HttpParserError``: the parser's reason is the one
        # being handled.
        reason = sys.exc_info()[1]
        detail = f": {reason}" if reason is not None and str(reason) else ""
        message = (
            f"the HTTP request could not be parsed{detail}; check the request line and that every header is "
            "`Name: value` with a non-empty name and no control characters"
        )
        path = (getattr(self, "url", b"") or b"").split(b"?", 1)[0].decode("latin-1")
        body = json.dumps(self.error_body(path, 400, message, "invalid_http")).encode()
        head = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body)]
        self.transport.write(b"".join([*head, b"connection: close\r\n\r\n", body]))
        self.transport.close()
