"""What can go wrong while the API waits for a sync worker, as domain errors with their HTTP status."""

from __future__ import annotations

from typing import Any

from app.core.errors import EmbedqError


class InferenceTimeoutError(EmbedqError):
    """No worker answered in time; the request is dropped unrun if no worker has started it."""

    status_code = 504
    code = "timeout"


class InferenceRejectedError(EmbedqError):
    """The worker refused the request (bad input, unknown model, ...); carries the worker's status and message."""

    def __init__(self, message: str, *, status_code: int, code: str, param: str | None = None, **extra: Any):
        super().__init__(message, param=param, **extra)
        self.status_code = status_code
        self.code = code


class InferenceFailedError(EmbedqError):
    """The worker failed on a valid request; its log says why."""

    status_code = 500
    code = "inference_failed"


class InferenceUnavailableError(EmbedqError):
    """The worker could not serve the model right now (its artifact store does not answer): retry shortly."""

    status_code = 503
    code = "model_store_unavailable"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message, param="model", **extra)
        self.headers["Retry-After"] = "30"
