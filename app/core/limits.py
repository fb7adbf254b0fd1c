"""Limits on what a request may carry, enforced before any route reads it (README "Hostile input").

``RequestLimits`` is a pure ASGI middleware:

- a body over its limit is a 413: at once when Content-Length says so, else as soon as the streamed bytes
  (chunked bodies) pass it, so no more than the limit is ever read;
- a document upload (POST /collections/{name}/documents) is streamed to its route and counted against
  EMBEDQ_MAX_UPLOAD_BYTES; a batch file upload (POST /v1/files) against EMBEDQ_BATCH_MAX_UPLOAD_BYTES;
  fine-tuning bodies against EMBEDQ_TRAINING_MAX_UPLOAD_BYTES; the rest against
  EMBEDQ_MAX_REQUEST_BYTES;
- a JSON body must be strict UTF-8 (no BOM, no UTF-16/32, no bad bytes), else a 400 that says so;
- a JSON body is scanned (brackets and strings only, in C via one regex) before the route parses it:
  nesting deeper than EMBEDQ_MAX_JSON_DEPTH is a 400, a string longer than EMBEDQ_MAX_JSON_STRING_CHARS
  a 413, and a NUL character (``\\u0000``, which Postgres text cannot hold), a lone surrogate (no UTF-8
  for it), ``NaN``/``Infinity`` or a number beyond float range a 400;
- a NUL character (``%00``) in the path or query string is a 400.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import Settings

# (path, status, message, code) -> the error body, so /v1 paths can answer in OpenAI's shape.
ErrorBody = Callable[[str, int, str, str], dict[str, Any]]

_UPLOAD_PATH = re.compile(r"^/collections/[^/]+/documents/?$")
_FILES_PATH = re.compile(r"^/v1/files/?$")
_TRAINING_PATHS = frozenset({"/fine-tune", "/fine-tune-lora"})
# Fine-tuning form fields and JSON keys around the pairs.
_TRAINING_ENVELOPE_BYTES = 64 * 1024
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")

# A JSON string, escapes included. Matching from the left keeps strings aligned: a quote met outside one opens one.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# Constants Python's json accepts though JSON has none, and the parts of a number that overflows a float
# (json reads 1e400 or 1111...1.0 with 309 digits as inf): a 3-digit exponent, or 300 digits in a row.
_MAYBE_NOT_FINITE = re.compile(rb"NaN|Infinity|[eE]\+?0*[1-9][0-9]{2}|[0-9]{300}")
_NOT_FINITE_CANDIDATE = re.compile(rb"NaN|Infinity|[0-9.]+[eE]\+?0*[1-9][0-9]{2,}|[0-9]{300,}[0-9.]*")
_BRACKETS = np.frombuffer(b"[{]}", dtype=np.uint8)


# Escapes that decode to NUL or to half a surrogate pair (a whole pair is checked too: rare, and cheap).
_RISKY_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


class BodyTooLargeError(HTTPException):
    """A body that passed its byte limit while streaming; routes that stream it (uploads) see this."""

    def __init__(self, limit: int, setting: str) -> None:
        super().__init__(status_code=413, detail=_too_large_message(limit, setting))


@dataclass(frozen=True)
class _Rejection:
    status: int
    code: str
    message: str


@dataclass(frozen=True)
class _BodyRule:
    limit: int
    setting: str
    scan_json: bool
    max_string_chars: int


class RequestLimits:
    """ASGI middleware: byte limits on bodies, shape limits on JSON, no NUL in URLs (see the module docstring)."""

    def __init__(self, app: ASGIApp, settings: Settings, error_body: ErrorBody) -> None:
        self.app = app
        self.settings = settings
        self.error_body = error_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if b"%00" in scope.get("raw_path", b"") or b"%00" in scope.get("query_string", b"") or "\x00" in path:
            message = "the URL contains a NUL character (%00): remove it"
            await self._reject(scope, send, _Rejection(400, "nul_character", message))
            return
        rule = self._rule(scope)
        headers = Headers(scope=scope)
        declared = _content_length(headers)
        if declared is not None and declared > rule.limit:
            await self._reject(scope, send, _too_large(rule))
            return
        content_type = headers.get("content-type", "").lower()
        if rule.scan_json and not content_type.startswith(_FORM_TYPES) and scope["method"] != "GET":
            await self._buffered(scope, receive, send, rule)
        else:
            await self._streamed(scope, receive, send, rule)

    def _rule(self, scope: Scope) -> _BodyRule:
        s = self.settings
        path = scope["path"]
        if scope["method"] == "POST" and _UPLOAD_PATH.match(path):
            return _BodyRule(s.max_upload_bytes, "EMBEDQ_MAX_UPLOAD_BYTES", False, 0)
        if scope["method"] == "POST" and _FILES_PATH.match(path):
            return _BodyRule(s.batch_max_upload_bytes, "EMBEDQ_BATCH_MAX_UPLOAD_BYTES", False, 0)
        if path in _TRAINING_PATHS:
            # The pairs may come as one JSON string (text_content): it is limited by the training setting.
            limit = s.training_max_upload_bytes + _TRAINING_ENVELOPE_BYTES
            return _BodyRule(limit, "EMBEDQ_TRAINING_MAX_UPLOAD_BYTES", True, s.training_max_upload_bytes)
        return _BodyRule(s.max_request_bytes, "EMBEDQ_MAX_REQUEST_BYTES", True, s.max_json_string_chars)

    async def _buffered(self, scope: Scope, receive: Receive, send: Send, rule: _BodyRule) -> None:
        """Read the body (at most the limit), check its JSON, then hand the same body to the app."""
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                # The client went away: let the app see the disconnect as it would have.
                await self.app(scope, _replay([], message), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > rule.limit:
                await self._reject(scope, send, _too_large(rule))
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        rejection = check_json(body, self.settings.max_json_depth, rule.max_string_chars)
        if rejection is not None:
            await self._reject(scope, send, rejection)
            return
        await self.app(scope, _replay([body], None, receive), send)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send, rule: _BodyRule) -> None:
        """Pass the body through as it arrives, raising BodyTooLargeError once it passes the limit."""
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > rule.limit:
                    raise BodyTooLargeError(rule.limit, rule.setting)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLargeError:
            if started:
                raise
            await self._reject(scope, send, _too_large(rule))

    async def _reject(self, scope: Scope, send: Send, rejection: _Rejection) -> None:
        body = self.error_body(scope["path"], rejection.status, rejection.message, rejection.code)
        # The rest of an oversized body is never read: the connection is closed after the answer.
        headers = {"Connection": "close"} if rejection.status == 413 else None
        response = JSONResponse(body, status_code=rejection.status, headers=headers)
        await response(scope, _no_body, send)


def check_json(body: bytes, max_depth: int, max_string_chars: int) -> _Rejection | None:
    """Return why a JSON ``body`` is refused (too deep, too long a string, NUL, NaN, ...), or None.

    The body must be UTF-8 first (``check_encoding``), so that what is checked is what the parser reads.
    Bodies that are not JSON, or not valid JSON, are left to the route to refuse with its own message.
    Cheap tests over the whole body (byte counts, C searches, numpy) decide whether the exact, slower
    checks are needed at all; for everyday bodies they are not.
    """
    rejection = check_encoding(body)
    if rejection is not None:
        return rejection
    return check_json_values(body, max_depth, max_string_chars)


def check_json_values(
    body: bytes, max_depth: int, max_string_chars: int, what: str = "the JSON body"
) -> _Rejection | None:
    """Return why the JSON text ``body`` (``what``, in the message) is refused, its encoding aside, or None:
    nested deeper than ``max_depth``, a string longer than ``max_string_chars`` or holding NUL or a lone
    surrogate, a number that is not finite."""
    if _strings_need_decoding(body, max_string_chars):
        for match in _STRING.finditer(body):
            rejection = _check_string(match.group(), max_string_chars)
            if rejection is not None:
                return rejection
    structure: bytes | None = None
    if body.count(b"[") + body.count(b"{") > max_depth:
        structure = _STRING.sub(b"", body)
        if _depth(structure) > max_depth:
            message = f"{what} nests deeper than {max_depth} levels (EMBEDQ_MAX_JSON_DEPTH): flatten it"
            return _Rejection(400, "json_too_deep", message)
    if _MAYBE_NOT_FINITE.search(body):
        # Found somewhere; only a number outside every string counts.
        structure = _STRING.sub(b"", body) if structure is None else structure
        for found in _NOT_FINITE_CANDIDATE.finditer(structure):
            if not _finite_number(found.group()):
                message = (
                    f"{what} holds {found.group()[:40].decode(errors='replace')!r}: numbers must be finite "
                    "JSON numbers (no NaN, Infinity, or values beyond ±1.8e308)"
                )
                return _Rejection(400, "invalid_number", message)
    return None


def check_encoding(body: bytes) -> _Rejection | None:
    """Return why ``body`` is not strict UTF-8 (a BOM, UTF-16 or UTF-32, bad bytes), or None.

    Python's JSON parser reads all of these (and UTF-8-encoded surrogates), so a check that scanned the raw
    bytes as UTF-8 would see another text than the route: they are refused before anything else looks.
    """
    encoding = json.detect_encoding(body)
    if encoding == "utf-8-sig":
        message = "the JSON body starts with a UTF-8 byte-order mark (EF BB BF): send UTF-8 without a BOM"
        return _Rejection(400, "byte_order_mark", message)
    if encoding != "utf-8":
        message = f"the JSON body is encoded as {encoding.upper()}: send it as UTF-8 (RFC 8259), without a BOM"
        return _Rejection(400, "unsupported_encoding", message)
    if body.isascii():
        return None
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"the JSON body is not valid UTF-8 (byte {exc.start}: {exc.reason}): send UTF-8"
        return _Rejection(400, "invalid_utf8", message)
    return None


def _strings_need_decoding(body: bytes, max_chars: int) -> bool:
    """Return False only when no string can hold NUL, a lone surrogate, or more than ``max_chars`` characters."""
    if _RISKY_ESCAPE.search(body):
        return True
    if len(body) <= max_chars + 2:
        return False
    if b'\\"' in body:
        return True  # escaped quotes: the gaps between quotes below no longer delimit strings
    quotes = np.flatnonzero(np.frombuffer(body, dtype=np.uint8) == ord('"'))
    gaps = np.diff(quotes, prepend=-1, append=len(body))
    return bool(gaps.max() > max_chars + 1)


def _depth(structure: bytes) -> int:
    codes = np.frombuffer(structure, dtype=np.uint8)
    brackets = codes[np.isin(codes, _BRACKETS)]
    if brackets.size == 0:
        return 0
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max())


def _check_string(token: bytes, max_chars: int) -> _Rejection | None:
    if len(token) - 2 <= max_chars and b"\\u" not in token:
        return None  # a character takes at least one byte, and only a \u escape makes NUL or a surrogate
    try:
        text = json.loads(token)
    except ValueError:
        return None  # invalid JSON: the route's parser says so
    if len(text) > max_chars:
        message = (
            f"a JSON string has {len(text)} characters; at most {max_chars} (EMBEDQ_MAX_JSON_STRING_CHARS): split it"
        )
        return _Rejection(413, "string_too_long", message)
    if "\x00" in text:
        message = "a JSON string contains a NUL character (\\u0000): strip it before sending"
        return _Rejection(400, "nul_character", message)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        message = "a JSON string holds a lone surrogate (\\ud800-\\udfff): send valid Unicode"
        return _Rejection(400, "invalid_unicode", message)
    return None


def _finite_number(token: bytes) -> bool:
    if token in (b"NaN", b"Infinity"):
        return False
    try:
        return math.isfinite(float(token))
    except ValueError:
        return True  # not a number after all: the route's parser says so


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _too_large_message(limit: int, setting: str) -> str:
    return f"the request body is larger than {limit} bytes ({setting}): send less, or split it"


def _too_large(rule: _BodyRule) -> _Rejection:
    return _Rejection(413, "payload_too_large", _too_large_message(rule.limit, rule.setting))


def _replay(bodies: list[bytes], final: Message | None, receive: Receive | None = None) -> Receive:
    """Return a receive that yields the buffered body once, then what the real receive says (disconnects)."""
    pending: list[Message] = [{"type": "http.request", "body": b, "more_body": False} for b in bodies]
    if final is not None:
        pending.append(final)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        if receive is not None:
            return await receive()
        return {"type": "http.disconnect"}

    return replayed


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
