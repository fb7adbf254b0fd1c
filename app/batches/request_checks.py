"""Check one batch request as POST /v1/embeddings checks its body, before any model runs.

A request that would get a 4xx from /v1/embeddings (a malformed body, an empty input, a model the tenant
may not use) gets that same status and OpenAI error body in the batch's error file; the others become an
``EmbedCall`` for the worker. Checks that need the model itself (too many tokens, dimensions beyond the
model's) are the worker's embed op's, as on the sync path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.batches.contracts import EmbedCall, RequestError
from app.catalog.access import check_model
from app.core.config import Settings
from app.core.errors import EmbedqError
from app.core.security import Principal
from app.v1.schemas import EmbeddingsRequest
from app.v1.service import OPENAI_MODEL_ERRORS, check_dimensions, check_texts, check_token_ids, split_input


@dataclass(frozen=True)
class Prepared:
    """A request ready to embed: the model name it asked for (as the response names it) and the call."""

    model: str
    call: EmbedCall
    encoding_format: str


@dataclass
class RequestChecker:
    """Checks the requests of one task for one tenant, resolving each model name once."""

    session: Session
    settings: Settings
    principal: Principal
    _models: dict[str, str | RequestError] = field(default_factory=dict)

    def prepare(self, body: dict[str, Any]) -> Prepared | RequestError:
        """Return the request ready to embed, or the error /v1/embeddings would have answered."""
        try:
            request = EmbeddingsRequest.model_validate(body)
        except ValidationError as exc:
            return RequestError(400, _validation_message(exc), param=_first_param(exc))
        texts, token_ids = split_input(request.input)
        asked = request.model or self.settings.default_model
        try:
            if texts is not None:
                check_texts(texts, self.settings)
            else:
                check_token_ids(token_ids or [], self.settings)
            resolved = self._resolve(asked)
            if isinstance(resolved, RequestError):
                return resolved
            check_dimensions(request.dimensions, asked, resolved, self.settings)
        except EmbedqError as exc:
            return _as_request_error(exc)
        call = EmbedCall(texts=texts, token_ids=token_ids, is_query=request.is_query, dimensions=request.dimensions)
        return Prepared(asked, call, request.encoding_format.value)

    def _resolve(self, asked: str) -> str | RequestError:
        if asked not in self._models:
            try:
                resolved = check_model(asked, self.settings, self.principal, OPENAI_MODEL_ERRORS, self.session)
                self._models[asked] = resolved.name
            except EmbedqError as exc:
                self._models[asked] = _as_request_error(exc)
        return self._models[asked]


def _as_request_error(exc: EmbedqError) -> RequestError:
    return RequestError(exc.status_code, exc.message, exc.code, exc.param)


def _validation_message(exc: ValidationError) -> str:
    """Return the message /v1 gives a body that fails validation (app/v1/errors.py), for the same body."""
    problems = []
    for error in exc.errors()[:3]:
        where = [str(part) for part in error.get("loc", ())]
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        problems.append(f"{'.'.join(where) or 'body'}: {message}")
    return "; ".join(problems) or "invalid request body"


def _first_param(exc: ValidationError) -> str | None:
    for error in exc.errors():
        if error.get("loc"):
            return str(error["loc"][0])
    return None
