"""What a batch's execution and the worker's model exchange: the worker imports this module, never a repository.

The worker implements ``EmbedRequests`` around its Encoder and the sync API's embed op
(``workers/tasks/batches.py``), so the requests of one task that name the same model share forward passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EmbedCall:
    """One request, checked and ready for its model: texts or token ids, and the options /v1/embeddings takes."""

    texts: list[str] | None
    token_ids: list[list[int]] | None
    is_query: bool | None
    dimensions: int | None


@dataclass(frozen=True)
class Embedded:
    """One request's vectors (float32, input order) and the tokens the model read for it."""

    vectors: np.ndarray
    prompt_tokens: int


@dataclass(frozen=True)
class RequestError:
    """Why one request got no vectors: the HTTP status and OpenAI error /v1/embeddings would have answered."""

    status_code: int
    message: str
    code: str | None = None
    param: str | None = None

    def body(self) -> dict[str, object]:
        """Return OpenAI's error body for this error."""
        kind = "server_error" if self.status_code >= 500 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


EmbedRequests = Callable[[str, list[EmbedCall]], list[Embedded | RequestError]]
"""(model name, requests) -> one outcome per request, in order; raises if the model cannot be loaded."""
