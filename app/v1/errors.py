"""OpenAI's error shape for /v1 paths: ``{"error": {"message", "type", "param", "code"}}``.

``install_openai_errors`` wraps the app's exception handlers: for a /v1 path the handler's answer is
reshaped (same status and headers; request validation errors become 400, as OpenAI answers them), every
other path keeps ``{"detail": ...}``. OpenAI clients read this shape to raise their typed errors.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError, WebSocketRequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.responses import Response

from app.core.error_rendering import SafeJSONResponse

Handler = Callable[[Request, Any], Response | Awaitable[Response]]

OPENAI_PREFIX = "/v1"

_CODES = {
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    429: "rate_limit_exceeded",
    504: "timeout",
}
_HOP_HEADERS = {"content-length", "content-type"}


def is_openai_path(request: Request) -> bool:
    """Return whether ``request`` is under /v1, where errors take OpenAI's shape."""
    path = request.url.path
    return path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/")


def error_type(status: int) -> str:
    """Return OpenAI's error ``type`` for an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def openai_error(
    status: int, message: str, *, code: str | None = None, param: str | None = None, **extra: Any
) -> dict[str, Any]:
    """Return an OpenAI error body."""
    return {
        "error": {
            "message": message,
            "type": error_type(status),
            "param": param,
            "code": code or _CODES.get(status),
            **extra,
        }
    }


def error_body(path: str, status: int, message: str, code: str) -> dict[str, Any]:
    """Return the error body a response on ``path`` takes: OpenAI's under /v1, ``{"detail", "code"}`` elsewhere."""
    if path == OPENAI_PREFIX or path.startswith(OPENAI_PREFIX + "/"):
        return openai_error(status, message, code=code)
    return {"detail": message, "code": code, "param": None}


def install_openai_errors(api: FastAPI) -> None:
    """Make ``api``'s error responses on /v1 paths OpenAI-shaped; call it after every handler is added."""
    for key, handler in list(api.exception_handlers.items()):
        if key is not WebSocketRequestValidationError:
            api.add_exception_handler(key, _for_openai_paths(handler))
    if Exception not in api.exception_handlers and 500 not in api.exception_handlers:
        api.add_exception_handler(Exception, _unexpected)


def _for_openai_paths(handler: Handler) -> Handler:
    async def handle(request: Request, exc: Any) -> Response:
        if is_openai_path(request) and isinstance(exc, RequestValidationError):
            return _validation_error(exc)
        response = handler(request, exc)
        if inspect.isawaitable(response):
            response = await response
        return _reshaped(response) if is_openai_path(request) else response

    return handle


_REQUEST_PARTS = frozenset({"body", "query", "path", "header", "cookie"})


def _validation_error(exc: RequestValidationError) -> Response:
    problems = []
    param = None
    for error in exc.errors()[:3]:
        if error.get("type") == "json_invalid":  # its loc is ("body", byte offset): no parameter to name
            at, reason = error.get("loc", ("body", "?"))[-1], (error.get("ctx") or {}).get("error", "")
            problems.append(f"the body is not valid JSON (byte {at}{': ' + reason if reason else ''}): send one object")
            continue
        loc = [str(part) for part in error.get("loc", ())]
        where = loc[1:] if loc and loc[0] in _REQUEST_PARTS else loc
        param = param or (where[0] if where else None)
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        problems.append(f"{'.'.join(where) or 'body'}: {message}")
    body = openai_error(400, "; ".join(problems) or "invalid request body", param=param)
    return SafeJSONResponse(body, status_code=400)


def _reshaped(response: Response) -> Response:
    raw = bytes(getattr(response, "body", b"") or b"")
    try:
        body = json.loads(raw)
    except ValueError:
        body = {"detail": raw.decode(errors="replace") or f"HTTP {response.status_code}"}
    if isinstance(body, dict) and "error" in body:
        return response
    if not isinstance(body, dict):
        body = {"detail": body}
    detail = body.pop("detail", None)
    message = detail if isinstance(detail, str) else json.dumps(detail)
    code, param = body.pop("code", None), body.pop("param", None)
    headers = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS}
    status = response.status_code
    return SafeJSONResponse(openai_error(status, message, code=code, param=param, **body), status, headers=headers)


def _unexpected(request: Request, _: Exception) -> Response:
    # Starlette still re-raises the exception after this answer, so the server logs its traceback.
    if is_openai_path(request):
        return JSONResponse(openai_error(500, "the server failed on this request; see the API's log"), 500)
    return PlainTextResponse("Internal Server Error", status_code=500)
