"""The synchronous API's decisions: check a request against the limits, send it to a worker, shape the answer."""

from __future__ import annotations

import base64
import fnmatch
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.catalog.access import ModelErrors, ModelNotFoundError, check_model
from app.core.config import Settings
from app.core.errors import EmbedqError
from app.core.security import Principal
from app.inference.dispatch import request
from app.observability.tracing import annotate

EMBED_OP = "embed"
TOKENIZE_OP = "tokenize"


class InvalidInputError(EmbedqError):
    status_code = 400
    code = "invalid_input"


@dataclass(frozen=True)
class Embedded:
    """Vectors of one request, in input order, with what the caller is told about them."""

    model: str
    vectors: np.ndarray
    prompt_tokens: int
    truncated: list[int]
    batch_requests: int

    def headers(self) -> dict[str, str]:
        """Return the response headers: how many inputs were truncated and how many requests shared the batch."""
        return {
            "X-Embedq-Truncated-Inputs": str(len(self.truncated)),
            "X-Embedq-Batch-Requests": str(self.batch_requests),
        }


OPENAI_MODEL_ERRORS = ModelErrors(invalid=InvalidInputError, unknown=ModelNotFoundError)
"""The sync API: 400 ``invalid_input`` for a malformed name, 404 ``model_not_found`` for an unknown one."""


class _ResolvedNames:
    """Names an admin resolved lately: a request's model check without a thread hop or a file lookup.

    Only admins' (everyone's when auth is off): what a tenant may see depends on the database, asked each
    time. An entry lives ``ttl_s`` seconds, so a model added to or removed from EMBEDQ_MODELS_DIR shows
    within that; a worker resolves the name again anyway and answers 404 for one that has gone.
    """

    def __init__(self, ttl_s: float = 1.0, max_entries: int = 1024) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._settings: Settings | None = None
        self._entries: dict[str, tuple[float, str]] = {}

    def get(self, asked: str, settings: Settings) -> str | None:
        if settings is not self._settings:  # new settings (tests, a reload): forget what the old ones said
            self._settings, self._entries = settings, {}
        entry = self._entries.get(asked)
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    def put(self, asked: str, resolved: str, settings: Settings) -> None:
        if settings is self._settings:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[asked] = (time.monotonic() + self.ttl_s, resolved)


_resolved_names = _ResolvedNames()


async def checked_model(name: str | None, settings: Settings, principal: Principal) -> tuple[str, str]:
    """Return (the name asked for, the name it resolves to), from the last second's answers for an admin."""
    asked = name or settings.default_model
    if principal.is_admin:
        resolved = _resolved_names.get(asked, settings)
        if resolved is not None:
            return asked, resolved
    # Another tenant's fine-tuned alias is unknown to ``principal``.
    resolved = (await run_in_threadpool(check_model, asked, settings, principal, OPENAI_MODEL_ERRORS)).name
    if principal.is_admin:
        _resolved_names.put(asked, resolved, settings)
    return asked, resolved


def check_texts(texts: list[str], settings: Settings) -> None:
    """Raise a 400 naming the first text that is empty or too long, or the count if there are too many."""
    _check_count(len(texts), settings)
    for i, text in enumerate(texts):
        if not text:
            raise InvalidInputError(f"input[{i}] is an empty string: remove it or give it some text", param="input")
        if len(text) > settings.max_input_chars:
            raise InvalidInputError(
                f"input[{i}] has {len(text)} characters; at most {settings.max_input_chars} "
                "(EMBEDQ_MAX_INPUT_CHARS): split it first",
                param="input",
            )


def check_token_ids(ids_lists: list[list[int]], settings: Settings) -> None:
    """Raise a 400 naming the first token-id input that is empty or holds a negative id."""
    _check_count(len(ids_lists), settings)
    for i, ids in enumerate(ids_lists):
        if not ids:
            raise InvalidInputError(f"input[{i}] is an empty array of token ids", param="input")
        if min(ids) < 0:
            raise InvalidInputError(f"input[{i}] holds a negative token id ({min(ids)})", param="input")


def _check_count(count: int, settings: Settings) -> None:
    if count == 0:
        raise InvalidInputError("input is empty: send at least one text", param="input")
    if count > settings.max_inputs_per_request:
        raise InvalidInputError(
            f"input has {count} items; at most {settings.max_inputs_per_request} per request "
            "(EMBEDQ_MAX_INPUTS_PER_REQUEST): split it, or use POST /jobs/embeddings for bulk work",
            param="input",
        )


def allows_dimensions(names: tuple[str, ...], settings: Settings) -> bool:
    """Return whether any of ``names`` matches EMBEDQ_MATRYOSHKA_MODELS (fnmatch patterns, case-insensitive)."""
    return any(
        fnmatch.fnmatch(name.lower(), pattern.lower()) for name in names for pattern in settings.matryoshka_models
    )


def check_dimensions(dimensions: int | None, asked: str, resolved: str, settings: Settings) -> None:
    """Raise a 400 if ``dimensions`` is asked of a model not listed in EMBEDQ_MATRYOSHKA_MODELS."""
    if dimensions is not None and not allows_dimensions((asked, resolved), settings):
        raise InvalidInputError(
            f"model {asked!r} does not support dimensions: its vectors were not trained to be shortened. Omit "
            "dimensions, use a Matryoshka model, or add this model to EMBEDQ_MATRYOSHKA_MODELS",
            param="dimensions",
        )


def split_input(
    value: str | list[str] | list[int] | list[list[int]],
) -> tuple[list[str] | None, list[list[int]] | None]:
    """Return (texts, token_ids) for an OpenAI ``input``: exactly one is not None."""
    if isinstance(value, str):
        return [value], None
    if isinstance(value[0], str):
        return list(value), None  # type: ignore[arg-type]
    if isinstance(value[0], int):
        return None, [list(value)]  # type: ignore[arg-type]
    return None, [list(ids) for ids in value]  # type: ignore[union-attr]


async def embed(
    model: str | None,
    settings: Settings,
    principal: Principal,
    *,
    texts: list[str] | None = None,
    token_ids: list[list[int]] | None = None,
    is_query: bool | None = None,
    dimensions: int | None = None,
) -> Embedded:
    """Return the vectors of ``texts`` (or ``token_ids``) computed by a sync worker with ``model``."""
    if texts is not None:
        check_texts(texts, settings)
    else:
        check_token_ids(token_ids or [], settings)
    asked, resolved = await checked_model(model, settings, principal)
    check_dimensions(dimensions, asked, resolved, settings)
    payload: dict[str, Any] = {
        "is_query": is_query,
        "dimensions": dimensions,
        "truncate": settings.truncate,
        "max_tokens": settings.max_tokens_per_request,
    }
    payload["texts" if texts is not None else "token_ids"] = texts if texts is not None else token_ids
    annotate(model=asked, batch_size=len(texts if texts is not None else token_ids or []), tenant=principal.tenant)
    reply = await request(EMBED_OP, asked, payload)
    result = reply.result
    annotate(tokens=int(result["prompt_tokens"]))
    raw = base64.b64decode(result["embeddings"])
    vectors = np.frombuffer(raw, dtype="<f4").reshape(result["count"], result["dimension"])
    return Embedded(asked, vectors, int(result["prompt_tokens"]), list(result["truncated"]), reply.batch_requests)


def embedding_items(vectors: np.ndarray, encoding_format: str) -> list[dict[str, Any]]:
    """Return OpenAI ``data`` items: floats, or base64 of each row's little-endian float32 bytes."""
    if encoding_format == "base64":
        rows: list[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in vectors]
    else:
        rows = vectors.tolist()
    return [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]


async def tokenize(
    model: str | None, texts: list[str], settings: Settings, principal: Principal, *, add_special_tokens: bool = True
) -> dict[str, Any]:
    """Return the /tokenize body: token ids, strings and counts per text, from the model's own tokenizer."""
    check_texts(texts, settings)
    asked, _ = await checked_model(model, settings, principal)
    payload = {"texts": texts, "add_special_tokens": add_special_tokens}
    result = (await request(TOKENIZE_OP, asked, payload)).result
    data = [{"index": i, **item} for i, item in enumerate(result["data"])]
    return {
        "object": "list",
        "model": asked,
        "max_tokens": result["max_tokens"],
        "data": data,
        "total_tokens": sum(item["count"] for item in data),
    }
