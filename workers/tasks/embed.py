"""Embedding tasks: parse ids, then hand over to the jobs service."""

from __future__ import annotations

import time
import uuid

from app.core.db import session_scope
from app.core.queues import TaskName
from app.jobs.service import Encoded, run_embedding_batch
from workers.celery_app import retrying_task
from workers.metrics import observe_encode
from workers.task_starts import refusing


def _encode(model: str, texts: list[str]) -> Encoded:
    from workers.runtime.registry import get_encoder  # torch is imported here, in the child only

    encoder = get_encoder(model)
    started = time.perf_counter()
    encoded = encoder.encode_counted(texts)
    tokens = sum(encoded.token_counts)
    observe_encode(encoder, len(texts), tokens, time.perf_counter() - started)
    return Encoded(encoded.vectors, tokens)


@retrying_task(TaskName.EMBED_BATCH, inputs=True)
def embed_batch(
    job_id: str, idxs: list[int] | int, stop: int | None = None, refused: str | None = None
) -> dict[str, object]:
    """Embed the inputs at `idxs` of job `job_id`; returns what this delivery wrote."""
    # A message sent before batches were cut by length names a range, (start, stop), not indices.
    batch = list(range(idxs, stop or idxs)) if isinstance(idxs, int) else idxs
    encode = refusing(refused) if refused else _encode
    outcome = run_embedding_batch(session_scope, uuid.UUID(job_id), batch, encode)
    return {
        "job_id": job_id,
        "written": outcome.written,
        "failed": outcome.failed,
        "finished": outcome.finished_status.value if outcome.finished_status else None,
    }
