"""All SQL about jobs and their per-input results."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.orm import Session

from app.core.security import Principal, visible_to
from app.models.job import ACTIVE_STATUSES, Job, JobResult, JobStatus


@dataclass(frozen=True)
class Counts:
    done: int
    failed: int
    total: int
    progress: float

    @property
    def finished(self) -> bool:
        return self.done + self.failed >= self.total


def vector_literal(row: np.ndarray) -> str:
    """Return pgvector's text form of one vector; float32 values round-trip exactly through repr."""
    return "[" + ",".join(map(repr, row.tolist())) + "]"


class JobRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, job_id: uuid.UUID) -> Job | None:
        return self.session.get(Job, job_id)

    def get_visible(self, job_id: uuid.UUID, principal: Principal) -> Job | None:
        """Return the job if ``principal`` may see it (its tenant's, or any for an admin), else None."""
        return self.session.scalar(select(Job).where(Job.id == job_id, visible_to(principal, Job.tenant)))

    def get_by_idempotency_key(self, tenant: str, key: str) -> Job | None:
        return self.session.scalar(select(Job).where(Job.tenant == tenant, Job.idempotency_key == key))

    def add(self, job: Job, inputs: Sequence[str]) -> None:
        self.session.add(job)
        self.session.flush()
        if inputs:
            self.session.execute(
                insert(JobResult), [{"job_id": job.id, "idx": i, "input": t} for i, t in enumerate(inputs)]
            )

    def list_jobs(
        self, principal: Principal, *, status: str | None, kind: str | None, limit: int, offset: int
    ) -> list[Job]:
        query = (
            select(Job)
            .where(visible_to(principal, Job.tenant))
            .order_by(Job.created_at.desc(), Job.id)
            .limit(limit)
            .offset(offset)
        )
        if status is not None:
            query = query.where(Job.status == status)
        if kind is not None:
            query = query.where(Job.kind == kind)
        return list(self.session.scalars(query))

    def claim(self, job_id: uuid.UUID) -> Job | None:
        """Mark an active job running and return it; None when it is finished, cancelled or gone."""
        return self.session.scalar(
            update(Job)
            .where(Job.id == job_id, Job.status.in_([s.value for s in ACTIVE_STATUSES]))
            .values(status=JobStatus.RUNNING.value, started_at=func.coalesce(Job.started_at, func.now()))
            .returning(Job)
        )

    def lock_running(self, job_id: uuid.UUID) -> bool:
        """Lock the job row for this transaction; True if the job is still running."""
        status = self.session.scalar(select(Job.status).where(Job.id == job_id).with_for_update())
        return status == JobStatus.RUNNING.value

    def pending_inputs(self, job_id: uuid.UUID, start: int, stop: int) -> list[tuple[int, str]]:
        rows = self.session.execute(
            select(JobResult.idx, JobResult.input)
            .where(
                JobResult.job_id == job_id,
                JobResult.idx >= start,
                JobResult.idx < stop,
                JobResult.embedding.is_(None),
                JobResult.error.is_(None),
            )
            .order_by(JobResult.idx)
        )
        return [(idx, input_) for idx, input_ in rows]

    def write_embeddings(self, job_id: uuid.UUID, idxs: Sequence[int], vectors: np.ndarray) -> int:
        """Store vectors for inputs that have none yet; return how many were newly written."""
        result = self.session.execute(
            text(
                "UPDATE job_results r SET embedding = v.e::vector "
                "FROM unnest(CAST(:idxs AS integer[]), CAST(:vecs AS text[])) AS v(idx, e) "
                "WHERE r.job_id = :job_id AND r.idx = v.idx AND r.embedding IS NULL AND r.error IS NULL"
            ),
            {"job_id": job_id, "idxs": list(idxs), "vecs": [vector_literal(v) for v in vectors]},
        )
        return result.rowcount

    def fail_inputs(self, job_id: uuid.UUID, idxs: Sequence[int], error: str) -> int:
        """Record an error for inputs still unresolved; return how many were newly failed."""
        result = self.session.execute(
            update(JobResult)
            .where(
                JobResult.job_id == job_id,
                JobResult.idx.in_(list(idxs)),
                JobResult.embedding.is_(None),
                JobResult.error.is_(None),
            )
            .values(error=error)
        )
        return result.rowcount

    def add_counts(self, job_id: uuid.UUID, *, done: int, failed: int) -> Counts:
        row = self.session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                done=Job.done + done,
                failed=Job.failed + failed,
                progress=100.0 * (Job.done + done + Job.failed + failed) / func.greatest(Job.total, 1),
            )
            .returning(Job.done, Job.failed, Job.total, Job.progress)
        ).one()
        return Counts(*row)

    def finish(self, job_id: uuid.UUID, status: JobStatus, *, message: str, error: str | None) -> bool:
        """Move a running job to a terminal status; False if something else finished it first."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
            .values(status=status.value, message=message, error=error, finished_at=func.now())
        )
        return result.rowcount == 1

    def fail_active(self, job_id: uuid.UUID, *, message: str, error: str) -> bool:
        """Move a queued or running job to failed; False if it had already finished."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_([s.value for s in ACTIVE_STATUSES]))
            .values(status=JobStatus.FAILED.value, message=message, error=error, finished_at=func.now())
        )
        return result.rowcount == 1

    def pending_batch_starts(self, job_id: uuid.UUID, batch_size: int) -> list[int]:
        """Return the first index of every batch that still has an input neither embedded nor failed."""
        batch = JobResult.idx // batch_size
        rows = self.session.scalars(
            select(batch)
            .where(JobResult.job_id == job_id, JobResult.embedding.is_(None), JobResult.error.is_(None))
            .group_by(batch)
            .order_by(batch)
        )
        return [int(b) * batch_size for b in rows]

    def cancel(self, job_id: uuid.UUID) -> bool:
        """Cancel an active job; False if it had already finished."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_([s.value for s in ACTIVE_STATUSES]))
            .values(status=JobStatus.CANCELLED.value, message="cancelled by request", finished_at=func.now())
        )
        return result.rowcount == 1

    def first_error(self, job_id: uuid.UUID) -> str | None:
        return self.session.scalar(
            select(JobResult.error)
            .where(JobResult.job_id == job_id, JobResult.error.is_not(None))
            .order_by(JobResult.idx)
            .limit(1)
        )

    def results_page(self, job_id: uuid.UUID, *, offset: int, limit: int) -> list[JobResult]:
        return list(
            self.session.scalars(
                select(JobResult)
                .where(JobResult.job_id == job_id, JobResult.idx >= offset)
                .order_by(JobResult.idx)
                .limit(limit)
            )
        )
