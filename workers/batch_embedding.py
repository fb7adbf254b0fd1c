"""The model side of a batch task: the requests for one model, run through the sync API's embed op at once.

Their inputs are pooled into length-sorted forward passes, and each answer is computed exactly as
/v1/embeddings computes it (prompts, truncation, ``dimensions``, the token limit per request). Importing this
module loads no model and no Celery app; ``embed_requests`` loads the model in the calling process.
"""

from __future__ import annotations

import base64
import time

import numpy as np

from app.batches.contracts import EmbedCall, Embedded, RequestError
from app.core.config import get_settings
from workers.inference.input_check import unreadable_input
from workers.metrics import observe_encode


def _payload(call: EmbedCall) -> dict[str, object]:
    settings = get_settings()
    payload: dict[str, object] = {
        "is_query": call.is_query,
        "dimensions": call.dimensions,
        "truncate": settings.truncate,
        "max_tokens": settings.max_tokens_per_request,
    }
    if call.texts is not None:
        payload["texts"] = call.texts
    else:
        payload["token_ids"] = call.token_ids
    return payload


def embed_requests(model: str, calls: list[EmbedCall]) -> list[Embedded | RequestError]:
    """Return each request's vectors or error, computed by the embed op of the sync path in shared passes."""
    from workers.inference import embed_ops  # torch is imported here, in the child only
    from workers.inference.ops import OpError
    from workers.runtime.registry import get_encoder

    encoder = get_encoder(model)
    payloads = [_payload(call) for call in calls]
    unreadable = [unreadable_input(p) for p in payloads]
    runnable = [p for p, bad in zip(payloads, unreadable, strict=True) if bad is None]
    started = time.perf_counter()
    ran = iter(embed_ops.embed(encoder, runnable) if runnable else [])
    outcomes: list[Embedded | RequestError] = []
    tokens = 0
    for bad in unreadable:
        result = bad if bad is not None else next(ran)
        if isinstance(result, OpError):
            outcomes.append(RequestError(result.status, result.message, result.code, result.param))
            continue
        raw = base64.b64decode(result["embeddings"])
        vectors = np.frombuffer(raw, dtype="<f4").reshape(result["count"], result["dimension"])
        tokens += int(result["prompt_tokens"])
        outcomes.append(Embedded(vectors, int(result["prompt_tokens"])))
    count = sum(len(p.get("texts") or p.get("token_ids") or ()) for p in runnable)  # type: ignore[arg-type]
    observe_encode(encoder, count, tokens, time.perf_counter() - started)
    return outcomes
