"""Batch API tasks (bulk queue): parse ids, then hand over to ``app.batches.execution``.

Each task's first argument is its job's id, as the reaper requires (``app/maintenance/kinds.py``). The
requests of one task that name the same model run through the sync API's embed op in one call, so their
inputs share length-sorted forward passes and their answers are computed exactly as /v1/embeddings computes
them.
"""

from __future__ import annotations

import base64
import time
import uuid

import numpy as np

from app.artifacts.store import ArtifactStore
from app.batches.contracts import EmbedCall, Embedded, RequestError
from app.batches.execution import finalize, run_chunk, validate
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.queues import TaskName
from workers.celery_app import retrying_task
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


def _store() -> ArtifactStore:
    return ArtifactStore.from_settings(get_settings())


@retrying_task(TaskName.BATCH_VALIDATE)
def validate_batch(job_id: str) -> dict[str, object]:
    """Validate the input file of batch job ``job_id`` and send its tasks."""
    status = validate(session_scope, uuid.UUID(job_id), _store(), get_settings())
    return {"job_id": job_id, "status": status.value if status else None}


@retrying_task(TaskName.BATCH_RUN)
def run_batch_chunk(job_id: str, start: int) -> dict[str, object]:
    """Run the requests of batch job ``job_id`` that the task starting at line ``start`` holds."""
    outcome = run_chunk(session_scope, uuid.UUID(job_id), int(start), embed_requests, get_settings())
    return {"job_id": job_id, "start": start, "completed": outcome.completed, "failed": outcome.failed}


@retrying_task(TaskName.BATCH_FINALIZE)
def finalize_batch(job_id: str) -> dict[str, object]:
    """Write the output and error files of batch job ``job_id`` and end it."""
    status = finalize(session_scope, uuid.UUID(job_id), _store(), get_settings())
    return {"job_id": job_id, "status": status.value if status else None}
