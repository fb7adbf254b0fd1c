"""The op behind /rerank and /v1/rerank for cross-encoders (``score_pairs``); BGE-M3's MaxSim is ``rerank``.

``score_pairs`` payload: ``query`` (str), ``texts`` (list of str), optional ``raw_scores`` (default false: the
sigmoid of each logit, as TEI answers), ``truncate`` (default true; false: a pair over the limit is a 400)
and ``max_tokens`` (tokens read per pair, EMBEDQ_RERANK_MAX_TOKENS_PER_PAIR, within the model's own limit).
Result: ``scores`` in text order and ``prompt_tokens`` (tokens the model read, after truncation).

The pairs of every payload in the batch are pooled, sorted by length and run in shared forward passes
(``workers/runtime/cross_encoder.py``); a payload the op rejects fails alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from app.core.config import get_settings
from workers.inference.ops import OpError, Payload, Result, register_op
from workers.runtime.pass_sizes import pass_size

if TYPE_CHECKING:
    from workers.runtime.cross_encoder import CrossEncoderModel, Pair
    from workers.runtime.encoder import Encoder


@dataclass(frozen=True)
class _Plan:
    pairs: list[Pair]
    raw_scores: bool
    max_tokens: int | None


def not_a_reranker(encoder: Encoder) -> OpError:
    """Return the 400 for a pair-scoring request to a model that is not a cross-encoder."""
    return OpError(
        f"model {encoder.name} is not a cross-encoder (it serves: {', '.join(encoder.tasks)}): score pairs with a "
        "reranker, a folder holding a *ForSequenceClassification model with one label",
        code="model_not_reranker",
        param="model",
    )


def _plan(encoder: CrossEncoderModel, payload: Payload) -> _Plan:
    query, texts = payload.get("query"), payload.get("texts")
    if not isinstance(query, str):
        raise OpError("query must be a string", code="invalid_payload", param="query")
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise OpError("texts must be a list of strings", code="invalid_payload", param="texts")
    max_tokens = payload.get("max_tokens")
    pairs = [(query, text) for text in texts]
    if payload.get("truncate", True) is False:
        limit = encoder.max_seq_length if max_tokens is None else min(int(max_tokens), encoder.max_seq_length)
        counts = encoder.pair_token_counts(pairs)
        over = next((i for i, n in enumerate(counts) if n > limit), None)
        if over is not None:
            raise OpError(
                f"the pair of query and texts[{over}] is {counts[over]} tokens long, over the {limit} tokens "
                f"model {encoder.name} reads per pair here, and truncate is false: shorten that text or the query, "
                "or send truncate: true",
                code="input_too_long",
                param="texts",
            )
    return _Plan(pairs, bool(payload.get("raw_scores", False)), max_tokens)


def _checked(encoder: CrossEncoderModel, payload: Payload) -> _Plan | OpError:
    try:
        return _plan(encoder, payload)
    except OpError as exc:
        return exc


@register_op("score_pairs", weight=lambda payload: len(payload.get("texts") or ()))
def score_pairs(encoder: Encoder, payloads: list[Payload]) -> list[Result | OpError]:
    """Return, per payload, the cross-encoder score of each (query, text) pair, in text order."""
    from workers.runtime.cross_encoder import CrossEncoderModel

    if not isinstance(encoder, CrossEncoderModel):
        return [not_a_reranker(encoder)] * len(payloads)
    checked = [_checked(encoder, payload) for payload in payloads]
    plans = [c for c in checked if isinstance(c, _Plan)]
    settings = get_settings()
    rows = pass_size(encoder.device.type, settings, cpu_rows=settings.max_batch_size).rows
    # Payloads that cut pairs at different lengths do not share a pass; the common case is one length for all.
    by_limit: dict[int | None, list[int]] = {}
    for p, plan in enumerate(plans):
        by_limit.setdefault(plan.max_tokens, []).append(p)
    logits: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(plans)
    counts: list[list[int]] = [[] for _ in plans]
    for limit, members in by_limit.items():
        pooled = [pair for p in members for pair in plans[p].pairs]
        scored = encoder.score_pairs(pooled, max_tokens=limit, batch_size=rows)
        start = 0
        for p in members:
            end = start + len(plans[p].pairs)
            logits[p], counts[p] = scored.logits[start:end], scored.token_counts[start:end]
            start = end
    results: list[Result | OpError] = []
    outputs = iter(zip(plans, logits, counts, strict=True))
    for item in checked:
        if isinstance(item, OpError):
            results.append(item)
            continue
        plan, raw, tokens = next(outputs)
        scores = raw if plan.raw_scores else 1.0 / (1.0 + np.exp(-raw.astype(np.float64)))
        results.append({"scores": [float(s) for s in scores], "prompt_tokens": sum(tokens)})
    return results
