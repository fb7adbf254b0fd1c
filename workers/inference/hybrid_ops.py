"""The ops behind /vectorize-hybrid, /vectorize-batch-hybrid (``hybrid``) and /rerank (``rerank``): BGE-M3 only.

``hybrid`` payload: ``texts`` (list of str), optional ``return_colbert`` (default false) and ``return_sparse``
(default true). Result: ``data``, one item per text with ``dense`` (list of float), ``sparse`` ({token id as
str: weight}), ``sparse_tokens`` ({token string: weight}) and, if asked, ``colbert`` (list of vectors).
The texts of every payload in a batch share the forward passes.

``rerank`` payload: ``query`` (str), ``candidates`` (list of str), optional ``batch_size``. Result: ``scores``,
the MaxSim score of each candidate in candidate order (``workers/runtime/m3.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from workers.inference.ops import OpError, Payload, Result, register_op

if TYPE_CHECKING:
    from workers.runtime.encoder import Encoder
    from workers.runtime.m3 import HybridOutput


def _not_hybrid(exc: Exception) -> OpError:
    return OpError(str(exc), status=400, code="model_not_hybrid", param="model")


def _texts(payload: Payload, key: str) -> list[str] | OpError:
    value = payload.get(key)
    if not isinstance(value, list) or not all(isinstance(text, str) for text in value):
        return OpError(f"{key} must be a list of strings", code="invalid_payload", param=key)
    return value


@register_op("hybrid", weight=lambda payload: len(payload.get("texts") or ()))
def hybrid(encoder: Encoder, payloads: list[Payload]) -> list[Result | OpError]:
    """Return, per payload, the dense, sparse and (if asked) ColBERT vectors of its texts."""
    from workers.runtime.m3 import NotHybridModelError, encode_hybrid

    checked = [_texts(payload, "texts") for payload in payloads]
    texts = [text for item in checked if not isinstance(item, OpError) for text in item]
    colbert = any(
        bool(p.get("return_colbert")) for p, c in zip(payloads, checked, strict=True) if not isinstance(c, OpError)
    )
    try:
        output = encode_hybrid(encoder, texts, return_colbert=colbert)
    except NotHybridModelError as exc:
        return [_not_hybrid(exc)] * len(payloads)
    results: list[Result | OpError] = []
    start = 0
    for payload, item in zip(payloads, checked, strict=True):
        if isinstance(item, OpError):
            results.append(item)
            continue
        rows = range(start, start + len(item))
        start += len(item)
        # sparse_dimension: the vocabulary a sparse vector's token ids index (a pgvector sparsevec's dim).
        data = [_item(encoder, output, row, payload) for row in rows]
        results.append({"data": data, "sparse_dimension": len(encoder.tokenizer)})
    return results


def _item(encoder: Encoder, output: HybridOutput, row: int, payload: Payload) -> dict[str, Any]:
    item: dict[str, Any] = {"dense": output.dense[row].tolist()}
    if payload.get("return_sparse", True):
        weights = output.sparse[row]
        tokens = encoder.tokenizer.convert_ids_to_tokens(list(weights))
        item["sparse"] = {str(token_id): weight for token_id, weight in weights.items()}
        item["sparse_tokens"] = dict(zip(tokens, weights.values(), strict=True))
    if payload.get("return_colbert") and output.colbert is not None:
        item["colbert"] = output.colbert[row].tolist()
    return item


@register_op("rerank", weight=lambda payload: len(payload.get("candidates") or ()) + 1)
def rerank(encoder: Encoder, payloads: list[Payload]) -> list[Result | OpError]:
    """Return, per payload, the MaxSim score of each candidate against its query, in candidate order."""
    from workers.runtime.m3 import NotHybridModelError, rerank_maxsim

    results: list[Result | OpError] = []
    for payload in payloads:
        candidates = _texts(payload, "candidates")
        query = payload.get("query")
        if isinstance(candidates, OpError):
            results.append(candidates)
            continue
        if not isinstance(query, str):
            results.append(OpError("query must be a string", code="invalid_payload", param="query"))
            continue
        try:
            scores = rerank_maxsim(encoder, query, candidates, batch_size=payload.get("batch_size"))
        except NotHybridModelError as exc:
            results.append(_not_hybrid(exc))
            continue
        results.append({"scores": scores})
    return results
