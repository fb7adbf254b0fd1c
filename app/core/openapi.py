"""The errors every operation may answer, added to the OpenAPI schema FastAPI generates from the routes.

Routes document their own outcomes; these come from around them: the request limits (400, 413, see
``app.core.limits``), an unreachable Postgres or Redis (503, ``app.core.outages``), and, under /v1, request
validation answered as OpenAI does (400 instead of 422, ``app.v1.errors``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_DETAIL_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["detail"],
    "properties": {"detail": {"description": "what went wrong and what to do about it"}},
}
_OPENAI_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"}},
        }
    },
}
# Domain errors the services raise (app.core.errors): an unknown job, collection or model, a clash with what
# exists, a request that is well-formed but cannot be done. Routes that take input may answer each.
_DOMAIN = {
    "404": "no such job, collection, model or endpoint (or not yours)",
    "409": "it clashes with what exists: an idempotency key, a name, a running re-embed",
    "422": "the request is well-formed but cannot be done: the message names the field and why",
}
_COMMON = {
    "400": "a hostile JSON body: nested deeper than EMBEDQ_MAX_JSON_DEPTH, or holding NUL, a lone surrogate, NaN",
    "413": "a body over EMBEDQ_MAX_REQUEST_BYTES (uploads: EMBEDQ_MAX_UPLOAD_BYTES), or a string over "
    "EMBEDQ_MAX_JSON_STRING_CHARS",
    "503": "Postgres or Redis is unreachable: retry after Retry-After seconds",
}
_METHODS = frozenset({"get", "put", "post", "delete", "patch"})


def document_common_errors(api: FastAPI) -> None:
    """Make ``api.openapi()`` declare, on every operation, the errors the app answers around its routes."""

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = get_openapi(
                title=api.title,
                version=api.version,
                summary=api.summary,
                description=api.description,
                routes=api.routes,
            )
            for path, operations in schema.get("paths", {}).items():
                openai_path = path == "/v1" or path.startswith("/v1/")
                for method, operation in operations.items():
                    if method in _METHODS and "health" not in operation.get("tags", ()):
                        _add_errors(operation, method, openai_path)
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


def _add_errors(operation: dict[str, Any], method: str, openai_path: bool) -> None:
    responses = operation.setdefault("responses", {})
    body = _OPENAI_ERROR if openai_path else _DETAIL_ERROR
    takes_input = bool(operation.get("parameters") or operation.get("requestBody"))
    for status, description in _DOMAIN.items():
        if takes_input and not (status == "409" and method == "get"):
            responses.setdefault(status, {"description": description})
    if openai_path and "422" in responses:
        # Under /v1 a request that fails validation is a 400 in OpenAI's shape, never a 422.
        del responses["422"]
        responses.setdefault("400", {"description": "the request is invalid: the message names the field"})
    for status, description in _COMMON.items():
        responses.setdefault(status, {"description": description})
    for status, response in responses.items():
        if status.startswith(("4", "5")):
            response["content"] = {"application/json": {"schema": body}}
