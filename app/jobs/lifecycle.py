"""A job's lifecycle, for every kind: create, report progress, finish, cancel, fail.

Embedding, ingest, reembed and training jobs all move through here, so the job-finished hook (the
``job.finished`` webhook) hangs off one place and fires once per job: a terminal move is a conditional
UPDATE, and only the call that made it announces it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.security import Principal
from app.jobs.repository import JobRepository
from app.models.job import Job, JobKind, JobStatus
from app.webhooks.service import notify_job_finished, notify_job_progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOutcome:
    """What one delivery of a batch task did: items written (inputs or documents) and failed, chunks written
    (ingest and reembed), and the terminal status the batch gave its job, if it finished it."""

    written: int
    failed: int
    chunks: int = 0
    finished_status: JobStatus | None = None

    @property
    def documents(self) -> int:
        """Return the documents an ingest or reembed batch wrote (its ``written``)."""
        return self.written


NOTHING_DONE = BatchOutcome(0, 0)

EndHook = Callable[[Session, Job, JobStatus], None]
"""(session, job, status): what a kind does when something else ends its job (a cancel, the reaper's fail)."""

_END_HOOKS: dict[str, EndHook] = {}


def on_end(kind: JobKind, hook: EndHook) -> None:
    """Have ``hook`` run, in the same transaction, when a job of ``kind`` is cancelled or failed by the reaper.

    For kinds with state of their own beyond the job row (a batch finalizes what completed).
    """
    _END_HOOKS[kind.value] = hook


def create(
    session: Session,
    principal: Principal,
    kind: JobKind,
    *,
    model: str,
    params: dict[str, Any],
    tenant: str | None = None,
    running: bool = False,
    inputs: Sequence[str] = (),
    **fields: Any,
) -> Job:
    """Return a new job of ``kind`` made by ``principal``, inserted and flushed (with a result row per input).

    It is queued, or ``running`` from now (a job the API itself feeds); ``tenant`` defaults to the
    caller's; ``fields`` are further columns (total, message, webhook_url, input_complete, ...).
    """
    job = Job(
        id=uuid.uuid4(),
        tenant=tenant or principal.tenant,
        api_key_id=principal.key_id,
        kind=kind.value,
        status=(JobStatus.RUNNING if running else JobStatus.QUEUED).value,
        model=model,
        params=params,
        started_at=datetime.now(UTC) if running else None,
        **fields,
    )
    JobRepository(session).add(job, inputs)
    return job


def report_progress(session: Session, job_id: uuid.UUID, progress: float, milestones: list[int]) -> None:
    """Queue the ``job.progress`` webhook events of the ``milestones`` (percentages) that ``progress`` reached.

    Call it with the job's ``params["progress_milestones"]`` after every progress update, in the same
    transaction; events already recorded are not recorded or sent again, so repeating a call is harmless.
    """
    reached = [m for m in milestones if progress >= m]
    if reached:
        notify_job_progress(session, job_id, reached, get_settings())


def finish(
    session: Session,
    job_id: uuid.UUID,
    status: JobStatus,
    *,
    message: str,
    error: str | None,
    progress: float | None = None,
) -> bool:
    """Move a running job to ``status`` and announce it; False (nothing announced) if another path finished it."""
    if not JobRepository(session).finish(job_id, status, message=message, error=error, progress=progress):
        return False
    _finished(session, job_id, status)
    return True


def cancel(session: Session, job_id: uuid.UUID, message: str = "cancelled by request") -> bool:
    """Cancel a queued or running job and announce it; False if it had already finished."""
    if not JobRepository(session).cancel(job_id, message):
        return False
    _finished(session, job_id, JobStatus.CANCELLED)
    _ended_elsewhere(session, job_id, JobStatus.CANCELLED)
    return True


def fail(session: Session, job_id: uuid.UUID, reason: str, message: str = "failed by the reaper") -> bool:
    """Fail a queued or running job of any kind with ``reason`` (the reaper's verdict); False if it had finished."""
    if not JobRepository(session).fail_active(job_id, message=message, error=reason):
        return False
    _finished(session, job_id, JobStatus.FAILED)
    _ended_elsewhere(session, job_id, JobStatus.FAILED)
    return True


def _ended_elsewhere(session: Session, job_id: uuid.UUID, status: JobStatus) -> None:
    job = JobRepository(session).get(job_id)
    hook = _END_HOOKS.get(job.kind) if job is not None else None
    if job is not None and hook is not None:
        hook(session, job, status)


def _finished(session: Session, job_id: uuid.UUID, status: JobStatus) -> None:
    """Run what follows a job's move to a terminal status, inside the transaction that made the move."""
    log.info("job %s finished: %s", job_id, status.value)
    notify_job_finished(session, job_id, status, get_settings())
