"""The ops behind /v1/embeddings, /vectorize, /vectorize-batch (``embed``) and /tokenize (``tokenize``).

``embed`` payload: ``texts`` (list of str) or ``token_ids`` (list of lists of int); optional ``is_query``
(the family's query or passage prompt), ``dimensions`` (keep the first N and L2-normalize again),
``truncate`` (false: an input over the model's limit is rejected) and ``max_tokens`` (of the whole request).
Result: ``embeddings`` (base64 of little-endian float32, row-major), ``count``, ``dimension``,
``prompt_tokens`` (tokens the model read, prompts and special tokens included) and ``truncated`` (indices).

The inputs of every payload in the batch are pooled, sorted by length and run in forward passes of at most
EMBEDQ_MAX_BATCH_SIZE rows and EMBEDQ_MAX_BATCH_TOKENS padded tokens.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from app.core.config import get_settings
from workers.inference.ops import OpError, Payload, Result, register_op
from workers.inference.token_ids import check_ids, content_ids, id_inputs, special_affixes
from workers.runtime.pass_sizes import pass_size

if TYPE_CHECKING:
    from workers.runtime.encoder import Encoder


def _inputs_of(payload: Payload) -> list[Any]:
    return list(payload.get("texts") or payload.get("token_ids") or ())


@dataclass
class _Plan:
    """One payload, checked and measured: what to embed and how many tokens each input costs."""

    inputs: list[Any]
    by_ids: bool
    is_query: bool | None
    lengths: list[int]
    truncated: list[int]
    dimensions: int | None


def _plan(encoder: Encoder, payload: Payload) -> _Plan:
    texts, ids = payload.get("texts"), payload.get("token_ids")
    if (texts is None) == (ids is None):
        raise OpError("an embed payload holds exactly one of texts and token_ids", code="invalid_payload")
    is_query = payload.get("is_query")
    limit = encoder.max_seq_length
    if texts is not None:
        raw = encoder.count_tokens(list(texts), truncate=False, is_query=is_query)
    else:
        check_ids(encoder.tokenizer, ids)
        prefix, suffix = special_affixes(encoder.tokenizer)
        raw = [len(prefix) + len(x) + len(suffix) for x in ids]
    max_tokens = payload.get("max_tokens")
    if max_tokens is not None and sum(raw) > max_tokens:
        raise OpError(
            f"the input is {sum(raw)} tokens long in all; a request may hold at most {max_tokens} "
            "(EMBEDQ_MAX_TOKENS_PER_REQUEST): split it into several requests",
            param="input",
            code="too_many_tokens",
        )
    truncated = [i for i, n in enumerate(raw) if n > limit]
    if truncated and not payload.get("truncate", True):
        i = truncated[0]
        raise OpError(
            f"input[{i}] is {raw[i]} tokens long, over the {limit} tokens model {encoder.name} reads, and "
            "truncation is off (EMBEDQ_TRUNCATE=false): shorten or split that input",
            param="input",
            code="input_too_long",
        )
    dimensions = payload.get("dimensions")
    if dimensions is not None and not 1 <= dimensions <= encoder.dimension:
        raise OpError(
            f"dimensions={dimensions}, but model {encoder.name} gives {encoder.dimension}-dimensional vectors: "
            f"ask for 1 to {encoder.dimension}",
            param="dimensions",
            code="invalid_dimensions",
        )
    return _Plan(
        inputs=list(texts if texts is not None else ids),
        by_ids=texts is None,
        is_query=is_query,
        lengths=[min(n, limit) for n in raw],
        truncated=truncated,
        dimensions=dimensions,
    )


def _encode_plans(encoder: Encoder, plans: list[_Plan]) -> list[np.ndarray]:
    """Return each plan's vectors, computed in shared, length-sorted forward passes."""
    settings = get_settings()
    rows = pass_size(encoder.device.type, settings, cpu_rows=settings.max_batch_size).rows
    out = [np.empty((len(plan.inputs), encoder.dimension), dtype=np.float32) for plan in plans]
    pools: dict[tuple[bool, bool | None], list[tuple[int, int]]] = {}
    for p, plan in enumerate(plans):
        pools.setdefault((plan.by_ids, plan.is_query), []).extend((p, j) for j in range(len(plan.inputs)))
    for (by_ids, is_query), units in pools.items():
        # The encoder plans the passes: longest first, at most ``rows`` rows and its token budget
        # (workers/runtime/pass_sizes.py: EMBEDQ_MAX_BATCH_SIZE and EMBEDQ_MAX_BATCH_TOKENS on a CPU).
        inputs = [plans[p].inputs[j] for p, j in units]
        if by_ids:
            vectors = encoder.encode_tokens(id_inputs(encoder, inputs), batch_size=rows)
        else:
            vectors = encoder.encode(inputs, is_query=is_query, batch_size=rows)
        for row, (p, j) in enumerate(units):
            out[p][j] = vectors[row]
    return out


def _shorten(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    kept = vectors[:, :dimensions]
    norms = np.linalg.norm(kept, axis=1, keepdims=True)
    return kept / np.maximum(norms, np.finfo(np.float32).tiny)


def _checked(encoder: Encoder, payload: Payload) -> _Plan | OpError:
    try:
        return _plan(encoder, payload)
    except OpError as exc:
        return exc


@register_op("embed", weight=lambda payload: len(_inputs_of(payload)))
def embed(encoder: Encoder, payloads: list[Payload]) -> list[Result | OpError]:
    """Return one embedding result per payload (see the module docstring), or the OpError rejecting it."""
    if "embed" not in encoder.tasks:
        refused = OpError(
            f"model {encoder.name} is a reranker (it serves: {', '.join(encoder.tasks)}) and gives no vectors: "
            "score pairs with it at POST /rerank or /v1/rerank, and embed with an embedding model",
            code="model_not_embedding",
            param="model",
        )
        return [refused] * len(payloads)
    checked = [_checked(encoder, payload) for payload in payloads]
    plans = [c for c in checked if isinstance(c, _Plan)]
    vectors = iter(_encode_plans(encoder, plans))
    results: list[Result | OpError] = []
    for item in checked:
        if isinstance(item, OpError):
            results.append(item)
            continue
        shortened = np.ascontiguousarray(_shorten(next(vectors), item.dimensions), dtype="<f4")
        results.append(
            {
                "embeddings": base64.b64encode(shortened.tobytes()).decode("ascii"),
                "count": shortened.shape[0],
                "dimension": shortened.shape[1],
                "prompt_tokens": sum(item.lengths),
                "truncated": item.truncated,
            }
        )
    return results


@register_op("warm_up")
def warm_up(encoder: Encoder, payloads: list[Payload]) -> list[Result | OpError]:
    """Load the model, so that the first request does not pay for it.

    The runner loads it on the thread that runs every op, and the Encoder runs its warm-up pass as it loads.
    """
    return [{"model": encoder.name} for _ in payloads]


@register_op("tokenize", weight=lambda payload: len(payload.get("texts") or ()))
def tokenize(encoder: Encoder, payloads: list[Payload]) -> list[Result | OpError]:
    """Return, per payload, each text's token ids, token strings and full token count.

    The ids are what the model reads (special tokens and any default prompt included, so ``count`` is their
    number), as TEI's tokenize gives them; ``add_special_tokens: false`` gives the text's own ids instead,
    the ones to send back as token-id input. ``count`` is always what the model reads before truncation;
    ``truncated`` says whether that is over ``max_tokens``, the model's limit.
    """
    limit = encoder.max_seq_length
    results: list[Result | OpError] = []
    for payload in payloads:
        texts = list(payload.get("texts") or ())
        full = encoder.token_ids(texts)
        ids = full if payload.get("add_special_tokens", True) else content_ids(encoder.tokenizer, texts)
        items = [
            {
                "ids": i,
                "tokens": encoder.tokenizer.convert_ids_to_tokens(i),
                "count": len(f),
                "truncated": len(f) > limit,
            }
            for i, f in zip(ids, full, strict=True)
        ]
        results.append({"data": items, "max_tokens": limit})
    return results
