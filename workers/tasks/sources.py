"""Source tasks (bulk queue): plan a source job's shards, read one shard; both hand over to ``app.sources``.

Each task's first argument is its job's id, as the reaper requires (``app/maintenance/kinds.py``).
"""

from __future__ import annotations

import logging
import uuid
from typing import NoReturn

from celery import Task

from app.core.config import get_settings
from app.core.db import session_scope
from app.core.queues import TaskName
from app.sources.planning import plan_source
from app.sources.shard_ingest import run_shard
from app.sources.store_faults import StoreOutageError
from workers import metrics
from workers.celery_app import retrying_task

log = logging.getLogger(__name__)


@retrying_task(TaskName.INGEST_PLAN)
def plan(job_id: str) -> dict[str, object]:
    """List source job ``job_id``'s objects and send a task per shard."""
    attempt = plan.request.retries + 1  # retries for outages of Postgres or Redis count too: a bound, not a tally
    try:
        shards = plan_source(session_scope, uuid.UUID(job_id), get_settings(), attempt=attempt)
    except StoreOutageError as exc:
        _again(plan, exc)
    return {"job_id": job_id, "shards": shards}


@retrying_task(TaskName.INGEST_SHARD)
def shard(job_id: str, seq: int) -> dict[str, object]:
    """Read shard ``seq`` of source job ``job_id`` into documents and ingest batches."""
    try:
        outcome = run_shard(session_scope, uuid.UUID(job_id), int(seq), get_settings())
    except StoreOutageError as exc:
        _again(shard, exc)
    return {
        "job_id": job_id,
        "seq": seq,
        "written": outcome.written,
        "unchanged": outcome.unchanged,
        "failed": outcome.failed,
        "finished": outcome.finished_status.value if outcome.finished_status else None,
    }


def _again(task: Task, exc: StoreOutageError) -> NoReturn:
    """Send ``task`` back to its queue to run again in ``exc.retry_in_s`` seconds (raises Celery's Retry).

    The read's own attempts (the shard's row, the plan's retries) bound it: Celery's task_max_retries does not.
    """
    log.warning("%s", exc)
    metrics.store_outage(task.name)
    return task.retry(exc=exc, countdown=exc.retry_in_s, max_retries=task.request.retries + 1)
