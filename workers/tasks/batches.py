"""Batch API tasks (bulk queue): parse ids, then hand over to ``app.batches.execution``.

Each task's first argument is its job's id, as the reaper requires (``app/maintenance/kinds.py``). The
requests of one task that name the same model share forward passes (``workers/batch_embedding.py``).
"""

from __future__ import annotations

import uuid

from app.artifacts.store import ArtifactStore
from app.batches.execution import finalize, run_chunk, validate
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.queues import TaskName
from workers.batch_embedding import embed_requests
from workers.celery_app import retrying_task
from workers.task_starts import refusing


def _store() -> ArtifactStore:
    return ArtifactStore.from_settings(get_settings())


@retrying_task(TaskName.BATCH_VALIDATE)
def validate_batch(job_id: str) -> dict[str, object]:
    """Validate the input file of batch job ``job_id`` and send its tasks."""
    status = validate(session_scope, uuid.UUID(job_id), _store(), get_settings())
    return {"job_id": job_id, "status": status.value if status else None}


@retrying_task(TaskName.BATCH_RUN, inputs=True)
def run_batch_chunk(job_id: str, start: int, refused: str | None = None) -> dict[str, object]:
    """Run the requests of batch job ``job_id`` that the task starting at line ``start`` holds."""
    embed = refusing(refused) if refused else embed_requests
    outcome = run_chunk(session_scope, uuid.UUID(job_id), int(start), embed, get_settings())
    return {"job_id": job_id, "start": start, "completed": outcome.completed, "failed": outcome.failed}


@retrying_task(TaskName.BATCH_FINALIZE)
def finalize_batch(job_id: str) -> dict[str, object]:
    """Write the output and error files of batch job ``job_id`` and end it."""
    status = finalize(session_scope, uuid.UUID(job_id), _store(), get_settings())
    return {"job_id": job_id, "status": status.value if status else None}
