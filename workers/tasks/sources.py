"""Source tasks (bulk queue): plan a source job's shards, read one shard; both hand over to ``app.sources``.

Each task's first argument is its job's id, as the reaper requires (``app/maintenance/kinds.py``).
"""

from __future__ import annotations

import uuid

from app.core.config import get_settings
from app.core.db import session_scope
from app.core.queues import TaskName
from app.sources.planning import plan_source
from app.sources.shard_ingest import run_shard
from workers.celery_app import retrying_task


@retrying_task(TaskName.INGEST_PLAN)
def plan(job_id: str) -> dict[str, object]:
    """List source job ``job_id``'s objects and send a task per shard."""
    return {"job_id": job_id, "shards": plan_source(session_scope, uuid.UUID(job_id), get_settings())}


@retrying_task(TaskName.INGEST_SHARD)
def shard(job_id: str, seq: int) -> dict[str, object]:
    """Read shard ``seq`` of source job ``job_id`` into documents and ingest batches."""
    outcome = run_shard(session_scope, uuid.UUID(job_id), int(seq), get_settings())
    return {
        "job_id": job_id,
        "seq": seq,
        "written": outcome.written,
        "unchanged": outcome.unchanged,
        "failed": outcome.failed,
        "finished": outcome.finished_status.value if outcome.finished_status else None,
    }
