"""Ingestion tasks (bulk queue): parse ids, then hand over to ``app.collections.ingestion``.

Each task's first argument is its job's id, as the reaper requires (``app/maintenance/kinds.py``).
"""

from __future__ import annotations

import uuid

from app.collections.ingestion import build_index, run_ingest_batch, run_reembed_batch
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.queues import TaskName
from app.jobs.lifecycle import BatchOutcome
from workers.celery_app import retrying_task
from workers.chunking import load_model
from workers.task_starts import refusing


def _report(job_id: str, seq: int, outcome: BatchOutcome) -> dict[str, object]:
    return {
        "job_id": job_id,
        "seq": seq,
        "documents": outcome.documents,
        "chunks": outcome.chunks,
        "failed": outcome.failed,
        "finished": outcome.finished_status.value if outcome.finished_status else None,
    }


@retrying_task(TaskName.INGEST_BATCH, inputs=True)
def ingest_batch(job_id: str, seq: int, refused: str | None = None) -> dict[str, object]:
    """Chunk, embed and store batch ``seq`` of ingest job ``job_id``."""
    load = refusing(refused) if refused else load_model
    outcome = run_ingest_batch(session_scope, uuid.UUID(job_id), seq, load, get_settings())
    return _report(job_id, seq, outcome)


@retrying_task(TaskName.INGEST_REEMBED, inputs=True)
def reembed_batch(job_id: str, seq: int, refused: str | None = None) -> dict[str, object]:
    """Embed batch ``seq`` of reembed job ``job_id`` into its new vector version."""
    load = refusing(refused) if refused else load_model
    outcome = run_reembed_batch(session_scope, uuid.UUID(job_id), seq, load, get_settings())
    return _report(job_id, seq, outcome)


@retrying_task(TaskName.INGEST_INDEX)
def index_version(job_id: str, version_id: int) -> dict[str, object]:
    """Build the HNSW index of a vector version, then finish the job that waited for it."""
    status = build_index(session_scope, uuid.UUID(job_id), int(version_id), get_settings())
    return {"job_id": job_id, "version_id": version_id, "finished": status.value if status else None}
