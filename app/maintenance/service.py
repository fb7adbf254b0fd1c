"""The reaper: active jobs whose tasks are gone from the broker are re-enqueued, or failed with a reason.

A job counts as lost when it is queued or running, its row (``updated_at``, bumped by every claim and
every batch written) has not changed for a grace period, and no message of its kind's tasks names it in
any queue or in the broker's unacked hash. That covers what redelivery cannot: a message deleted from
Redis, tasks never sent because Redis was down when the job committed, a task that exhausted its retries
while Postgres was down, a task acknowledged by a worker that then died without finishing the job.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.jobs import lifecycle
from app.jobs.repository import JobRepository
from app.maintenance.kinds import RECOVERIES, KindRecovery
from app.maintenance.repository import MaintenanceRepository
from app.models.recovery import RecoveryAction

log = logging.getLogger(__name__)

# Jobs examined per kind and run; the stalest first, the rest on the next run.
STALLED_PER_RUN = 500

JobsWithTasks = Callable[[frozenset[str]], set[str]]
"""(task names) -> ids of the jobs that have a message of one of those tasks in the broker."""


@dataclass
class ReapReport:
    """What one run of the reaper did."""

    ran: bool = True
    stalled: int = 0
    requeued: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    errors: int = 0


def reap(
    scope: Callable[[], AbstractContextManager[Session]],
    settings: Settings,
    jobs_with_tasks: JobsWithTasks,
    recoveries: Mapping[str, KindRecovery] = RECOVERIES,
) -> ReapReport:
    """Re-enqueue or fail every lost job; returns what was done (``ran=False`` if another reaper runs).

    Each job is recovered in a transaction of its own, so one that cannot be does not hold back the rest.
    """
    report = ReapReport()
    with scope() as session:
        repo = MaintenanceRepository(session)
        if not repo.try_lock():
            return ReapReport(ran=False)
        stalled = [
            (kind, job_id)
            for kind, recovery in recoveries.items()
            for job_id in repo.stalled_job_ids(kind, _grace_s(recovery, settings), STALLED_PER_RUN)
        ]
        report.stalled = len(stalled)
        if not stalled:
            return report
        alive = jobs_with_tasks(frozenset(name.value for r in recoveries.values() for name in r.task_names))
        for kind, job_id in stalled:
            if str(job_id) in alive:
                continue
            try:
                with scope() as job_session:
                    _recover(job_session, job_id, recoveries[kind], settings, report)
            except Exception:
                log.exception("could not recover job %s; the next run will try again", job_id)
                report.errors += 1
    return report


def _grace_s(recovery: KindRecovery, settings: Settings) -> float:
    return recovery.grace_s(settings) if recovery.grace_s else settings.reaper_grace_s


def _recover(
    session: Session, job_id: uuid.UUID, recovery: KindRecovery, settings: Settings, report: ReapReport
) -> None:
    repo = MaintenanceRepository(session)
    job = repo.lock_active(job_id)
    if job is None:
        return  # it finished while we looked
    lost = f"no progress since {job.updated_at:%Y-%m-%d %H:%M:%S %Z} and none of its tasks queued or running"
    requeues = repo.requeue_count(job_id)
    if recovery.requeue is None:
        reason = f"its tasks were lost ({lost}) and {job.kind} jobs cannot be resumed: submit it again"
    elif requeues >= settings.reaper_max_requeues:
        reason = (
            f"its tasks were lost again ({lost}) after {requeues} re-enqueues by the reaper: giving up; "
            "check the workers' logs, then submit it again"
        )
    else:
        tasks = recovery.requeue(session, job)
        repo.record(job_id, RecoveryAction.REQUEUED, f"its tasks were lost ({lost}): re-enqueued {tasks}", tasks)
        JobRepository(session).touch(job_id)  # re-enqueued work gets a full grace period
        report.requeued[str(job_id)] = tasks
        log.warning("job %s (%s): tasks lost, re-enqueued %d", job_id, job.kind, tasks)
        return
    lifecycle.fail(session, job_id, reason)
    repo.record(job_id, RecoveryAction.FAILED, reason)
    report.failed[str(job_id)] = reason
    log.warning("job %s (%s) failed by the reaper: %s", job_id, job.kind, reason)
