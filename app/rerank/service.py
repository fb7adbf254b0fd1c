"""Reranking: check the model can rerank (by its folder, no torch), check the pairs against the limits, and ask a
sync worker for the scores: a cross-encoder's (op ``score_pairs``) or BGE-M3's MaxSim (op ``rerank``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from starlette.concurrency import run_in_threadpool

from app.catalog.access import ModelErrors, check_model
from app.catalog.families import detect_family
from app.catalog.resolver import local_known_models
from app.catalog.tasks import is_cross_encoder, model_tasks
from app.core.config import Settings
from app.core.errors import EmbedqError
from app.core.security import Principal
from app.hybrid import service as hybrid
from app.inference.dispatch import infer

SCORE_PAIRS_OP = "score_pairs"
DOCUMENTS_PER_SEARCH_UNIT = 100

Scorer = Literal["cross-encoder", "maxsim"]


class NotARerankerError(EmbedqError):
    """The model gives vectors, not pair scores."""

    code = "model_not_reranker"


class InvalidRerankError(EmbedqError):
    code = "invalid_input"


@dataclass(frozen=True)
class Reranker:
    """The model a rerank request named (as asked) and how it scores pairs."""

    model: str
    scorer: Scorer


@dataclass(frozen=True)
class Scored:
    """One score per text, in text order, and the tokens the model read (0 for MaxSim, which does not count)."""

    scores: list[float]
    tokens: int


def check_reranker(name: str | None, settings: Settings, principal: Principal, errors: ModelErrors) -> Reranker:
    """Return the reranker to use, or raise: the API style's error for an unknown name, a 400 for an embedder."""
    asked = name or settings.default_rerank_model or settings.default_model
    resolved = check_model(asked, settings, principal, errors)
    family = detect_family(resolved.name, resolved.path, resolved.family)
    if "rerank" not in model_tasks(resolved.name, resolved.path, family):
        raise NotARerankerError(
            f"model {asked} (family {family.name}) is an embedding model and cannot rerank: name a reranker, a "
            "cross-encoder folder (a *ForSequenceClassification model with one label, e.g. BAAI/bge-reranker-base) "
            f"or a BGE-M3 model, or set EMBEDQ_DEFAULT_RERANK_MODEL. Rerankers here: "
            f"{', '.join(reranker_models(settings)) or '(none)'}",
            param="model",
        )
    return Reranker(asked, "cross-encoder" if is_cross_encoder(resolved.name, resolved.path) else "maxsim")


def reranker_models(settings: Settings) -> list[str]:
    """Return the names a request may use to rerank: cross-encoders and BGE-M3 models with their heads."""
    names = []
    for name, resolved in local_known_models(settings):
        assert resolved.path is not None
        family = detect_family(resolved.name, resolved.path, resolved.family)
        if "rerank" in model_tasks(resolved.name, resolved.path, family):
            names.append(name)
    return names


def check_pairs(query: str, texts: list[str], settings: Settings, *, field: str) -> None:
    """Raise a 400 naming the fix for an empty query or list, too many texts, or an empty or overlong text."""
    if not query.strip():
        raise InvalidRerankError("query is empty: send the text the others are scored against", param="query")
    if not texts:
        raise InvalidRerankError(f"{field} is empty: send at least one text to score against the query", param=field)
    if len(texts) > settings.rerank_max_pairs:
        raise InvalidRerankError(
            f"{field} holds {len(texts)} texts; a request may score at most {settings.rerank_max_pairs} "
            "(EMBEDQ_RERANK_MAX_PAIRS): split it into several requests",
            param=field,
        )
    for where, text in [("query", query), *((f"{field}[{i}]", text) for i, text in enumerate(texts))]:
        if not text.strip():
            raise InvalidRerankError(
                f"{where} is empty or only whitespace: remove it or give it some text", param=field
            )
        if len(text) > settings.max_input_chars:
            raise InvalidRerankError(
                f"{where} has {len(text)} characters; at most {settings.max_input_chars} (EMBEDQ_MAX_INPUT_CHARS): "
                "shorten it",
                param=field,
            )


async def checked_reranker(name: str | None, settings: Settings, principal: Principal, errors: ModelErrors) -> Reranker:
    """``check_reranker`` off the event loop (it reads model folders)."""
    return await run_in_threadpool(check_reranker, name, settings, principal, errors)


async def score(
    reranker: Reranker,
    query: str,
    texts: list[str],
    settings: Settings,
    *,
    raw_scores: bool = False,
    truncate: bool | None = None,
    batch_size: int | None = None,
) -> Scored:
    """Return each text's score against ``query``, in text order, from a sync worker."""
    if reranker.scorer == "maxsim":
        scores = await hybrid.rerank(reranker.model, query, texts, batch_size or settings.max_batch_size)
        return Scored(scores, 0)
    payload = {
        "query": query,
        "texts": texts,
        "raw_scores": raw_scores,
        "truncate": settings.truncate if truncate is None else truncate,
        "max_tokens": settings.rerank_max_tokens_per_pair,
    }
    result = await infer(SCORE_PAIRS_OP, reranker.model, payload)
    # One text, one score: padding in a batch moves a score's last digits with its place, and a repeated text
    # ranked before an earlier copy of itself (ties keep text order).
    first: dict[str, float] = {}
    scores = [first.setdefault(text, float(score)) for text, score in zip(texts, result["scores"], strict=True)]
    return Scored(scores, int(result.get("prompt_tokens", 0)))


def ranking(scores: list[float], top_n: int | None = None) -> list[int]:
    """Return text indices best first (ties keep text order), the first ``top_n`` if given."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return order if top_n is None else order[:top_n]


def search_units(documents: int) -> int:
    """Return the search units Cohere would bill: one per started 100 documents."""
    return max(1, math.ceil(documents / DOCUMENTS_PER_SEARCH_UNIT))
