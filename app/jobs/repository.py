"""All SQL about jobs and their per-input results: the one place that inserts or updates a ``jobs`` row.

Other domains reach it through ``app.jobs.lifecycle`` (create, progress, finish, cancel, fail) or, for
their own counters and messages, through the methods below; none of them writes ``jobs`` itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import case, func, insert, literal, select, text, update
from sqlalchemy.orm import Session

from app.core.binary_copy import int4_vector_payload
from app.core.security import Principal, visible_to
from app.models.job import ACTIVE_STATUSES, Job, JobKind, JobResult, JobStatus


@dataclass(frozen=True)
class Counts:
    """A job's counters after an update (inputs for embeddings, documents for ingest and reembed)."""

    total: int
    done: int
    failed: int
    input_complete: bool
    progress: float

    @property
    def finished(self) -> bool:
        """Return True when every input counted so far is done or failed."""
        return self.done + self.failed >= self.total


# What an update of a job's counts returns (Counts' fields, in order).
_COUNTS = (Job.total, Job.done, Job.failed, Job.input_complete, Job.progress)
_ACTIVE = [s.value for s in ACTIVE_STATUSES]


class JobRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def backlog_batches(self, tenant: str, *, embedding_batch: int, ingest_batch: int) -> int:
        """Return about how many batches of ``tenant``'s active embedding, ingest and reembed jobs are not done.

        Inputs (or documents) left, over the batch size of their kind, rounded up per job (fair queues).
        """
        left = func.greatest(Job.total - Job.done - Job.failed, 0)
        size = case((Job.kind == JobKind.EMBEDDINGS.value, embedding_batch), else_=ingest_batch)
        batches = func.ceil(left * 1.0 / size)
        kinds = [JobKind.EMBEDDINGS.value, JobKind.INGEST.value, JobKind.REEMBED.value]
        total = self.session.scalar(
            select(func.coalesce(func.sum(batches), 0)).where(
                Job.tenant == tenant,
                Job.kind.in_(kinds),
                Job.status.in_([s.value for s in ACTIVE_STATUSES]),
            )
        )
        return int(total or 0)

    def get(self, job_id: uuid.UUID) -> Job | None:
        return self.session.get(Job, job_id)

    def get_visible(self, job_id: uuid.UUID, principal: Principal) -> Job | None:
        """Return the job if ``principal`` may see it (its tenant's, or any for an admin), else None."""
        return self.session.scalar(select(Job).where(Job.id == job_id, visible_to(principal, Job.tenant)))

    def get_by_idempotency_key(self, tenant: str, key: str) -> Job | None:
        return self.session.scalar(select(Job).where(Job.tenant == tenant, Job.idempotency_key == key))

    def add(self, job: Job, inputs: Sequence[str] = ()) -> None:
        """Insert a job and, for an embedding job, one result row per input."""
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
            .where(Job.id == job_id, Job.status.in_(_ACTIVE))
            .values(status=JobStatus.RUNNING.value, started_at=func.coalesce(Job.started_at, func.now()))
            .returning(Job)
        )

    def lock(self, job_id: uuid.UUID) -> Job | None:
        """Return the job with its row locked for this transaction, or None if it is gone."""
        return self.session.scalar(select(Job).where(Job.id == job_id).with_for_update())

    def active_for_collection(self, collection_id: int, kinds: Sequence[str]) -> list[Job]:
        """Return the queued or running jobs of these kinds that work on the collection."""
        return list(
            self.session.scalars(
                select(Job).where(
                    Job.kind.in_(list(kinds)),
                    Job.status.in_(_ACTIVE),
                    Job.params["collection_id"].as_integer() == collection_id,
                )
            )
        )

    def lock_running(self, job_id: uuid.UUID) -> bool:
        """Lock the job row for this transaction; True if the job is still running."""
        status = self.session.scalar(select(Job.status).where(Job.id == job_id).with_for_update())
        return status == JobStatus.RUNNING.value

    def pending_inputs(self, job_id: uuid.UUID, idxs: Sequence[int]) -> list[tuple[int, str]]:
        """Return (index, text) of the inputs at ``idxs`` that are neither embedded nor failed, in index order."""
        rows = self.session.execute(
            select(JobResult.idx, JobResult.input)
            .where(
                JobResult.job_id == job_id,
                JobResult.idx.in_(list(idxs)),
                JobResult.embedding.is_(None),
                JobResult.error.is_(None),
            )
            .order_by(JobResult.idx)
        )
        return [(idx, input_) for idx, input_ in rows]

    def write_embeddings(self, job_id: uuid.UUID, idxs: Sequence[int], vectors: np.ndarray) -> int:
        """Store vectors for inputs that have none yet; return how many were newly written.

        The vectors go in through binary COPY into a transaction-local staging table, then one UPDATE joins
        it: no float-to-text round trip (a text literal per vector cost more than the forward pass's share).
        """
        if len(idxs) == 0:
            return 0
        self.session.execute(
            text(
                "CREATE TEMP TABLE IF NOT EXISTS job_vector_staging (idx integer, embedding vector) "
                "ON COMMIT DELETE ROWS"
            )
        )
        self.session.execute(text("DELETE FROM job_vector_staging"))
        raw = self.session.connection().connection.driver_connection
        with (
            raw.cursor() as cursor,
            cursor.copy("COPY job_vector_staging (idx, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy,
        ):
            copy.write(int4_vector_payload(idxs, np.ascontiguousarray(vectors, dtype=np.float32)))
        result = self.session.execute(
            text(
                "UPDATE job_results r SET embedding = s.embedding FROM job_vector_staging s "
                "WHERE r.job_id = :job_id AND r.idx = s.idx AND r.embedding IS NULL AND r.error IS NULL"
            ),
            {"job_id": job_id},
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

    def add_counts(
        self,
        job_id: uuid.UUID,
        *,
        total: int = 0,
        done: int = 0,
        failed: int = 0,
        skipped: int = 0,
        chunks_total: int = 0,
        chunks_done: int = 0,
        shards_total: int = 0,
        shards_done: int = 0,
        shards_failed: int = 0,
        tokens: int = 0,
    ) -> Counts:
        """Return the job's counters after adding these to them; the progress follows done and failed."""
        row = self.session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                total=Job.total + total,
                done=Job.done + done,
                failed=Job.failed + failed,
                skipped=Job.skipped + skipped,
                chunks_total=Job.chunks_total + chunks_total,
                chunks_done=Job.chunks_done + chunks_done,
                shards_total=Job.shards_total + shards_total,
                shards_done=Job.shards_done + shards_done,
                shards_failed=Job.shards_failed + shards_failed,
                tokens=Job.tokens + tokens,
                progress=100.0 * (Job.done + done + Job.failed + failed) / func.greatest(Job.total + total, 1),
                updated_at=func.now(),
            )
            .returning(*_COUNTS)
        ).one()
        return Counts(*row)

    def close_input(self, job_id: uuid.UUID, upload_error: str | None) -> Counts:
        """Mark the job's upload complete (with why it broke off, if it did); return its counters."""
        values: dict[str, Any] = {"input_complete": True, "updated_at": func.now()}
        if upload_error is not None:
            values["params"] = Job.params.op("||")(func.jsonb_build_object("upload_error", upload_error))
        row = self.session.execute(update(Job).where(Job.id == job_id).values(**values).returning(*_COUNTS)).one()
        return Counts(*row)

    def record_progress(self, job_id: uuid.UUID, *, progress: float, done: int, total: int, message: str) -> bool:
        """Store a running job's progress; False (nothing written) if it is no longer running."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
            .values(progress=progress, done=done, total=total, message=message)
        )
        return result.rowcount == 1

    def set_message(self, job_id: uuid.UUID, message: str) -> None:
        """Set a running job's message (and so its ``updated_at``, the reaper's heartbeat)."""
        self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
            .values(message=message, updated_at=func.now())
        )

    def set_params(self, job_id: uuid.UUID, params: dict[str, Any]) -> None:
        self.session.execute(update(Job).where(Job.id == job_id).values(params=params))

    def touch(self, job_id: uuid.UUID) -> None:
        """Restart the job's idle clock (the reaper's, after it re-enqueued the job's work)."""
        self.session.execute(update(Job).where(Job.id == job_id).values(updated_at=func.now()))

    def add_item_errors(self, job_id: uuid.UUID, sample: Sequence[dict[str, Any]], keep: int) -> None:
        """Append per-item errors to the job's row while it shows fewer than ``keep``."""
        self.session.execute(
            update(Job)
            .where(Job.id == job_id, func.jsonb_array_length(Job.item_errors) < keep)
            .values(item_errors=Job.item_errors.op("||")(literal(list(sample), Job.item_errors.type)))
        )

    def finish(
        self, job_id: uuid.UUID, status: JobStatus, *, message: str, error: str | None, progress: float | None = None
    ) -> bool:
        """Move a running job to a terminal status (and ``progress``, if given); False if something else
        finished it first."""
        values: dict[str, Any] = {"status": status.value, "message": message, "error": error, "finished_at": func.now()}
        if progress is not None:
            values["progress"] = progress
        result = self.session.execute(
            update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING.value).values(**values)
        )
        return result.rowcount == 1

    def fail_active(self, job_id: uuid.UUID, *, message: str, error: str) -> bool:
        """Move a queued or running job to failed; False if it had already finished."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(_ACTIVE))
            .values(status=JobStatus.FAILED.value, message=message, error=error, finished_at=func.now())
        )
        return result.rowcount == 1

    def pending_lengths(self, job_id: uuid.UUID) -> list[tuple[int, int]]:
        """Return (index, characters) of every input neither embedded nor failed, in index order."""
        rows = self.session.execute(
            select(JobResult.idx, func.char_length(JobResult.input))
            .where(JobResult.job_id == job_id, JobResult.embedding.is_(None), JobResult.error.is_(None))
            .order_by(JobResult.idx)
        )
        return [(int(idx), int(length or 0)) for idx, length in rows]

    def cancel(self, job_id: uuid.UUID, message: str) -> bool:
        """Cancel an active job; False if it had already finished."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(_ACTIVE))
            .values(status=JobStatus.CANCELLED.value, message=message, finished_at=func.now())
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
