"""Error answers that always render: the values a client sent are reported as they can be written, never a 500.

A 422 repeats the offending input; that input may be a lone surrogate (no UTF-8 for it), a NaN (no JSON for
it) or undecodable bytes. ``printable`` turns each into text that says what it was, so the renderer itself
cannot fail on what it reports.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.utils import is_body_allowed_for_status_code
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response


def printable(value: Any) -> Any:
    """Return ``value`` with every part JSON and UTF-8 can hold: NaN as ``"nan"``, a lone surrogate as ``\\ud800``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [printable(v) for v in value]
    return value


class SafeJSONResponse(JSONResponse):
    """A JSONResponse that renders ``printable(content)``: for error bodies, which may quote any input."""

    def render(self, content: Any) -> bytes:
        return super().render(printable(content))


async def validation_error(_: Request, exc: Exception) -> Response:
    """Return FastAPI's 422 for a request that fails validation, whatever input it quotes."""
    assert isinstance(exc, RequestValidationError)
    return SafeJSONResponse({"detail": jsonable_encoder(printable(exc.errors()))}, status_code=422)


async def http_error(_: Request, exc: Exception) -> Response:
    """Return Starlette's answer to an HTTPException, whatever its detail holds."""
    assert isinstance(exc, HTTPException)
    if not is_body_allowed_for_status_code(exc.status_code):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def install_safe_error_rendering(api: FastAPI) -> None:
    """Replace FastAPI's default 422 and HTTPException handlers with ones that cannot fail on their values."""
    api.add_exception_handler(RequestValidationError, validation_error)
    api.add_exception_handler(HTTPException, http_error)
