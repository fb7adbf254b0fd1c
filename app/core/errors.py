"""Domain errors: each carries the HTTP status it maps to and a message that says what to fix."""

from __future__ import annotations

from typing import Any


class EmbedqError(Exception):
    """Base of errors a client caused; rendered as ``{"detail": message, "code": code}``."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, param: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.extra = extra
        self.headers: dict[str, str] = {}


class NotFoundError(EmbedqError):
    status_code = 404
    code = "not_found"


class ConflictError(EmbedqError):
    status_code = 409
    code = "conflict"


class InvalidRequestError(EmbedqError):
    status_code = 422
    code = "invalid_request"


class TooManyRequestsError(EmbedqError):
    """A per-key limit was reached; ``Retry-After`` says when to try again, if that is known."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int | None = None, **extra: Any) -> None:
        super().__init__(message, **extra)
        if retry_after_s is not None:
            self.headers["Retry-After"] = str(retry_after_s)
