"""The reaper's hook for ingest jobs that read a source: re-send the plan, the pending shards and batches."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.collections.ingestion import requeue_ingest
from app.collections.repository import CollectionRepository
from app.collections.settling import settle
from app.core.config import get_settings
from app.core.db import enqueue
from app.core.queues import TaskName
from app.jobs.fairness import batch_priorities
from app.jobs.repository import JobRepository
from app.models.job import Job
from app.sources.repository import SourceRepository


def requeue_ingest_job(session: Session, job: Job) -> int:
    """Re-enqueue what a stalled ingest job has left; return how many tasks (uploads: ``requeue_ingest``).

    A source job not yet planned gets its plan again; a planned one its pending shards and batches (a shard
    or batch that turns up after all changes nothing: both are claimed by a conditional UPDATE).
    """
    if "source" not in job.params or job.input_complete:
        return requeue_ingest(session, job)
    if not job.params.get("planned"):
        enqueue(session, TaskName.INGEST_PLAN, str(job.id))
        return 1
    shards = SourceRepository(session).pending_shards(job.id)
    batches = CollectionRepository(session).pending_batches(job.id)
    for seq in shards:
        enqueue(session, TaskName.INGEST_SHARD, str(job.id), seq)
    priorities = batch_priorities(session, job.tenant, get_settings(), len(batches), counted=True)
    for seq, priority in zip(batches, priorities, strict=True):
        enqueue(session, TaskName.INGEST_BATCH, str(job.id), seq, priority=priority)
    if not shards:  # every shard is in but the input was left open: close it
        JobRepository(session).close_input(job.id, None)
        session.refresh(job)
        settle(session, job.id, get_settings())
    return len(shards) + len(batches)
