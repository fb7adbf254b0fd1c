"""All SQL of the Batch API, one class per table: batch_files, batches, batch_requests, batch_results.

The ``jobs`` row of a batch is written only through ``app.jobs`` (its lifecycle and repository).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, literal, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.core.security import Principal, visible_to
from app.models.batch import Batch, BatchFile, BatchRequest, BatchResult, BatchStatus

# Rows read at once while the output file is assembled.
RESULTS_PAGE = 500


# A file is gone to the API from its expires_at on, whether or not the sweep has deleted it yet.
_LIVE = or_(BatchFile.expires_at.is_(None), BatchFile.expires_at > func.now())


class FileRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, file: BatchFile) -> BatchFile:
        self.session.add(file)
        self.session.flush()
        return file

    def add_once(self, file: BatchFile) -> None:
        """Insert a file row unless one with its id exists (a finalize delivered twice writes one)."""
        values = {
            "id": file.id,
            "tenant": file.tenant,
            "filename": file.filename,
            "purpose": file.purpose,
            "bytes": file.bytes,
            "storage_key": file.storage_key,
            "expires_at": file.expires_at,
        }
        self.session.execute(insert(BatchFile).values(**values).on_conflict_do_nothing(index_elements=["id"]))

    def get_visible(self, file_id: str, principal: Principal) -> BatchFile | None:
        """Return the file if ``principal`` may see it and it has not expired."""
        return self.session.scalar(
            select(BatchFile).where(BatchFile.id == file_id, visible_to(principal, BatchFile.tenant), _LIVE)
        )

    def get(self, file_id: str) -> BatchFile | None:
        return self.session.get(BatchFile, file_id)

    def page(
        self, principal: Principal, *, purpose: str | None, after: str | None, limit: int, order: str = "desc"
    ) -> list[BatchFile]:
        """Return up to ``limit`` files, newest first (``order`` asc: oldest first), starting after the file
        ``after``."""
        query = select(BatchFile).where(visible_to(principal, BatchFile.tenant), _LIVE)
        if purpose is not None:
            query = query.where(BatchFile.purpose == purpose)
        position = tuple_(BatchFile.created_at, BatchFile.id)
        if after is not None:
            cursor = self.get_visible(after, principal)
            if cursor is not None:
                mark = tuple_(literal(cursor.created_at), literal(cursor.id))
                query = query.where(position > mark if order == "asc" else position < mark)
        keys = (BatchFile.created_at, BatchFile.id)
        ordered = keys if order == "asc" else tuple(key.desc() for key in keys)
        return list(self.session.scalars(query.order_by(*ordered).limit(limit)))

    def delete(self, file: BatchFile) -> None:
        self.session.delete(file)
        self.session.flush()

    def take_expired(self, limit: int) -> list[BatchFile]:
        """Delete up to ``limit`` expired files' rows (locked, skipping rows another sweep holds); return them."""
        rows = list(
            self.session.scalars(
                select(BatchFile)
                .where(BatchFile.expires_at <= func.now())
                .order_by(BatchFile.expires_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        for row in rows:
            self.session.delete(row)
        self.session.flush()
        return rows


@dataclass(frozen=True)
class RequestCounts:
    total: int
    completed: int
    failed: int

    @property
    def finished(self) -> bool:
        return self.completed + self.failed >= self.total


class BatchRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, batch: Batch) -> Batch:
        self.session.add(batch)
        self.session.flush()
        return batch

    def get_visible(self, batch_id: str, principal: Principal) -> Batch | None:
        return self.session.scalar(select(Batch).where(Batch.id == batch_id, visible_to(principal, Batch.tenant)))

    def of_job(self, job_id: Any) -> Batch | None:
        return self.session.scalar(select(Batch).where(Batch.job_id == job_id))

    def lock_of_job(self, job_id: Any) -> Batch | None:
        return self.session.scalar(select(Batch).where(Batch.job_id == job_id).with_for_update())

    def page(self, principal: Principal, *, after: str | None, limit: int) -> list[Batch]:
        """Return up to ``limit`` batches, newest first, starting after the batch ``after``."""
        query = select(Batch).where(visible_to(principal, Batch.tenant))
        if after is not None:
            cursor = self.get_visible(after, principal)
            if cursor is not None:
                query = query.where(
                    (Batch.created_at < cursor.created_at)
                    | and_(Batch.created_at == cursor.created_at, Batch.id < cursor.id)
                )
        return list(self.session.scalars(query.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit)))

    def start(self, batch_id: str, total: int, chunk_starts: list[int]) -> bool:
        """Move a validating batch in progress, its requests counted and cut; False if it is no longer validating."""
        result = self.session.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.status == BatchStatus.VALIDATING.value, Batch.ending.is_(None))
            .values(
                status=BatchStatus.IN_PROGRESS.value, total=total, chunk_starts=chunk_starts, in_progress_at=func.now()
            )
        )
        return result.rowcount == 1

    def decide_end(self, batch_id: str, ending: BatchStatus, errors: list[dict[str, Any]] | None = None) -> bool:
        """Decide how a batch ends (once): finalizing (or cancelling) from now; False if its end was decided."""
        shown = BatchStatus.CANCELLING if ending is BatchStatus.CANCELLED else BatchStatus.FINALIZING
        values: dict[str, Any] = {"ending": ending.value, "status": shown.value}
        values["cancelling_at" if shown is BatchStatus.CANCELLING else "finalizing_at"] = func.now()
        if errors is not None:
            values["errors"] = errors
        result = self.session.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.ending.is_(None), Batch.status.notin_(_TERMINAL))
            .values(**values)
        )
        return result.rowcount == 1

    def add_counts(self, batch_id: str, *, completed: int, failed: int) -> RequestCounts:
        row = self.session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(completed=Batch.completed + completed, failed=Batch.failed + failed)
            .returning(Batch.total, Batch.completed, Batch.failed)
        ).one()
        return RequestCounts(*row)

    def end(self, batch_id: str, status: BatchStatus, *, output_file_id: str | None, error_file_id: str | None) -> bool:
        """Give a batch its terminal status and files; False if it had one already."""
        stamp = {
            BatchStatus.COMPLETED: "completed_at",
            BatchStatus.FAILED: "failed_at",
            BatchStatus.EXPIRED: "expired_at",
            BatchStatus.CANCELLED: "cancelled_at",
        }[status]
        values: dict[str, Any] = {
            "status": status.value,
            stamp: func.now(),
            "output_file_id": output_file_id,
            "error_file_id": error_file_id,
        }
        if status is BatchStatus.COMPLETED:
            values["finalizing_at"] = func.coalesce(Batch.finalizing_at, func.now())
        result = self.session.execute(
            update(Batch).where(Batch.id == batch_id, Batch.status.notin_(_TERMINAL)).values(**values)
        )
        return result.rowcount == 1


_TERMINAL = [s.value for s in BatchStatus if s.terminal]


class RequestRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add_all(self, batch_id: str, rows: Sequence[tuple[int, str, dict[str, Any]]]) -> None:
        """Insert (line, custom_id, body) rows; a redelivered validation inserts nothing twice."""
        if rows:
            self.session.execute(
                insert(BatchRequest)
                .values(
                    [{"batch_id": batch_id, "line": line, "custom_id": cid, "body": body} for line, cid, body in rows]
                )
                .on_conflict_do_nothing(index_elements=["batch_id", "line"])
            )

    def pending(self, batch_id: str, start: int, stop: int | None, limit: int | None = None) -> list[BatchRequest]:
        """Return the requests of lines [start, stop) that have no result yet, in line order."""
        query = (
            select(BatchRequest)
            .outerjoin(
                BatchResult,
                and_(BatchResult.batch_id == BatchRequest.batch_id, BatchResult.custom_id == BatchRequest.custom_id),
            )
            .where(BatchRequest.batch_id == batch_id, BatchRequest.line >= start, BatchResult.custom_id.is_(None))
            .order_by(BatchRequest.line)
            .limit(limit)
        )
        if stop is not None:
            query = query.where(BatchRequest.line < stop)
        return list(self.session.scalars(query))

    def has_pending(self, batch_id: str, start: int, stop: int | None) -> bool:
        """Return whether any request of lines [start, stop) has no result yet."""
        return bool(self.pending(batch_id, start, stop, limit=1))


@dataclass(frozen=True)
class ResultRow:
    """One result as the output file needs it, with the request's encoding_format."""

    line: int
    custom_id: str
    status_code: int
    model: str | None
    vectors: bytes | None
    dimension: int | None
    prompt_tokens: int | None
    error: dict[str, Any] | None
    encoding_format: str | None


_RESULT_DEFAULTS: dict[str, Any] = dict.fromkeys(("model", "vectors", "dimension", "prompt_tokens", "error"))


class ResultRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add_new(self, batch_id: str, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Insert results keyed by (batch, custom_id); return the status codes of those that were new.

        A status code of 0 marks a request never run (the batch was cancelled or expired first).
        """
        if not rows:
            return []
        # One multi-row VALUES needs every column in every row.
        inserted = self.session.execute(
            insert(BatchResult)
            .values([{**_RESULT_DEFAULTS, "batch_id": batch_id, **row} for row in rows])
            .on_conflict_do_nothing(index_elements=["batch_id", "custom_id"])
            .returning(BatchResult.status_code)
        )
        return [int(code) for code in inserted.scalars()]

    def in_line_order(self, batch_id: str) -> Iterator[ResultRow]:
        """Yield every result of the batch in line order, a page at a time."""
        after = 0
        while True:
            rows = self.session.execute(
                select(
                    BatchResult.line,
                    BatchResult.custom_id,
                    BatchResult.status_code,
                    BatchResult.model,
                    BatchResult.vectors,
                    BatchResult.dimension,
                    BatchResult.prompt_tokens,
                    BatchResult.error,
                    BatchRequest.body["encoding_format"].astext,
                )
                .join(
                    BatchRequest,
                    and_(BatchRequest.batch_id == BatchResult.batch_id, BatchRequest.line == BatchResult.line),
                )
                .where(BatchResult.batch_id == batch_id, BatchResult.line > after)
                .order_by(BatchResult.line)
                .limit(RESULTS_PAGE)
            ).all()
            if not rows:
                return
            for row in rows:
                yield ResultRow(*row)
            after = rows[-1][0]

    def counts(self, batch_id: str) -> tuple[int, int]:
        """Return (completed, failed) results of the batch."""
        ok = func.count().filter(BatchResult.status_code.between(200, 299))
        bad = func.count().filter(BatchResult.status_code >= 300)
        completed, failed = self.session.execute(select(ok, bad).where(BatchResult.batch_id == batch_id)).one()
        return int(completed), int(failed)


def when(value: datetime | None) -> int | None:
    """Return a timestamp as OpenAI gives it: whole seconds since the epoch."""
    return int(value.timestamp()) if value is not None else None
