"""How a batch's end is decided: once, by whoever gets there first, and always followed by ``batch.finalize``.

The last task's results (completed), a task that finds the window passed (expired), a failed validation
(failed), a cancel through /v1/batches or /jobs, or the reaper failing the job: each sets the batch's
``ending`` with a conditional UPDATE, and only the one that set it sends the finalize task.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.batches.repository import BatchRepository
from app.core.db import enqueue
from app.core.queues import TaskName
from app.jobs import lifecycle
from app.models.batch import BatchStatus
from app.models.job import Job, JobKind, JobStatus


def decide(
    session: Session, batch_id: str, job_id: Any, ending: BatchStatus, errors: list[dict[str, Any]] | None = None
) -> bool:
    """Set how the batch ends and send its finalize task after commit; False if its end was decided already."""
    if not BatchRepository(session).decide_end(batch_id, ending, errors):
        return False
    enqueue(session, TaskName.BATCH_FINALIZE, str(job_id))
    return True


def job_ended(session: Session, job: Job, status: JobStatus) -> None:
    """The lifecycle hook of batch jobs: a cancelled job cancels its batch, a job failed by the reaper fails it."""
    batch = BatchRepository(session).of_job(job.id)
    if batch is None:
        return
    if status is JobStatus.CANCELLED:
        decide(session, batch.id, job.id, BatchStatus.CANCELLED)
        return
    error = {
        "code": "batch_failed",
        "message": f"the batch's job {job.id} failed: see GET /jobs/{job.id} for why",
        "param": None,
        "line": None,
    }
    decide(session, batch.id, job.id, BatchStatus.FAILED, [error])


# Registered where the hook lives; app/batches/__init__.py imports this module with any part of the package.
lifecycle.on_end(JobKind.BATCH, job_ended)
