"""All SQL of the reaper: its lock, the jobs that stopped making progress, and its audit trail."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models.job import ACTIVE_STATUSES, Job
from app.models.recovery import JobRecovery, RecoveryAction

# pg_try_advisory_xact_lock key: one reaper at a time per database, however many beat or worker processes.
REAPER_LOCK_KEY = 0x656D6265647172  # "embedqr"


class MaintenanceRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def try_lock(self) -> bool:
        """Take the reaper's lock until this transaction ends; False if another reaper holds it."""
        return bool(self.session.scalar(select(func.pg_try_advisory_xact_lock(REAPER_LOCK_KEY))))

    def stalled_job_ids(self, kind: str, idle_s: float, limit: int) -> list[uuid.UUID]:
        """Return active jobs of ``kind`` whose row has not changed for ``idle_s`` seconds, stalest first."""
        return list(
            self.session.scalars(
                select(Job.id)
                .where(
                    Job.kind == kind,
                    Job.status.in_([s.value for s in ACTIVE_STATUSES]),
                    Job.updated_at < func.now() - timedelta(seconds=idle_s),
                )
                .order_by(Job.updated_at)
                .limit(limit)
            )
        )

    def lock_active(self, job_id: uuid.UUID) -> Job | None:
        """Lock and return the job if it is still queued or running."""
        return self.session.scalar(
            select(Job).where(Job.id == job_id, Job.status.in_([s.value for s in ACTIVE_STATUSES])).with_for_update()
        )

    def requeue_count(self, job_id: uuid.UUID) -> int:
        return (
            self.session.scalar(
                select(func.count())
                .select_from(JobRecovery)
                .where(JobRecovery.job_id == job_id, JobRecovery.action == RecoveryAction.REQUEUED.value)
            )
            or 0
        )

    def record(self, job_id: uuid.UUID, action: RecoveryAction, reason: str, tasks: int = 0) -> None:
        self.session.add(JobRecovery(job_id=job_id, action=action.value, reason=reason, tasks=tasks))
        self.session.flush()

    def recoveries(self, job_id: uuid.UUID) -> list[JobRecovery]:
        return list(
            self.session.scalars(select(JobRecovery).where(JobRecovery.job_id == job_id).order_by(JobRecovery.id))
        )
