"""Batches, as the API sees them: create one from an uploaded file, read, list and cancel.

A batch is a job of kind ``batch`` (``app.jobs.lifecycle``): /jobs lists it, the per-key job limit admits it,
cancelling either one cancels both, and the reaper recovers it (``app/maintenance/kinds.py``).
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from sqlalchemy import func
from sqlalchemy.orm import Session

from app.batches.repository import BatchRepository, FileRepository
from app.batches.schemas import MAX_METADATA_PAIRS, BatchCreate, BatchList, BatchObject
from app.batches.validation import ENDPOINT
from app.core.config import Settings
from app.core.db import enqueue
from app.core.errors import ConflictError, EmbedqError, NotFoundError
from app.core.queues import TaskName
from app.core.security import Principal
from app.jobs import lifecycle
from app.keys.service import admit_job
from app.models.batch import Batch, BatchStatus, FilePurpose
from app.models.job import JobKind

COMPLETION_WINDOW = "24h"
# jobs.model of a batch: each request names its own model.
PER_REQUEST_MODEL = "(per request)"


class BatchRequestError(EmbedqError):
    status_code = 400
    code = "invalid_request"


def new_batch_id() -> str:
    return f"batch_{secrets.token_hex(12)}"


def create_batch(session: Session, payload: BatchCreate, settings: Settings, principal: Principal) -> Batch:
    """Return a new batch of the caller's tenant, validating: its job is queued and its validation task sent."""
    if payload.endpoint != ENDPOINT:
        raise BatchRequestError(
            f"endpoint {payload.endpoint!r} is not supported: embedq runs batches of {ENDPOINT} only",
            param="endpoint",
        )
    if payload.completion_window != COMPLETION_WINDOW:
        raise BatchRequestError(
            f"completion_window {payload.completion_window!r} is not supported: use '{COMPLETION_WINDOW}'",
            param="completion_window",
        )
    _check_metadata(payload.metadata)
    file = FileRepository(session).get_visible(payload.input_file_id, principal)
    if file is None:
        raise NotFoundError(f"no file with id {payload.input_file_id!r}", param="input_file_id")
    if file.purpose != FilePurpose.BATCH.value:
        raise BatchRequestError(
            f"file {file.id} has purpose {file.purpose!r}: a batch reads a file uploaded with purpose='batch'",
            param="input_file_id",
        )
    admit_job(session, principal, settings)
    batch_id = new_batch_id()
    job = lifecycle.create(
        session,
        principal,
        JobKind.BATCH,
        model=PER_REQUEST_MODEL,
        params={"batch_id": batch_id, "admin": principal.is_admin},
        message=f"batch {batch_id}: validating {file.id}",
    )
    batch = BatchRepository(session).add(
        Batch(
            id=batch_id,
            job_id=job.id,
            tenant=principal.tenant,
            input_file_id=file.id,
            endpoint=payload.endpoint,
            completion_window=payload.completion_window,
            status=BatchStatus.VALIDATING.value,
            batch_metadata=payload.metadata,
            output_expires_after_s=payload.output_expires_after.seconds if payload.output_expires_after else None,
            chunk_starts=[],
            total=0,
            completed=0,
            failed=0,
            # The database's clock, as created_at's: expires_at - created_at is exactly the window.
            expires_at=func.now() + timedelta(seconds=settings.batch_completion_window_s),
        )
    )
    enqueue(session, TaskName.BATCH_VALIDATE, str(job.id))
    return batch


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if not metadata:
        return
    if len(metadata) > MAX_METADATA_PAIRS:
        raise BatchRequestError(f"metadata has {len(metadata)} pairs; at most {MAX_METADATA_PAIRS}", param="metadata")
    for key, value in metadata.items():
        if len(key) > 64 or len(value) > 512:
            raise BatchRequestError(
                f"metadata key {key[:64]!r}: keys take at most 64 characters and values 512", param="metadata"
            )


def get_batch(session: Session, batch_id: str, principal: Principal) -> Batch:
    """Return the batch if ``principal`` may see it; another tenant's is a 404, as if it did not exist."""
    batch = BatchRepository(session).get_visible(batch_id, principal)
    if batch is None:
        raise NotFoundError(f"no batch with id {batch_id!r}", param="batch_id")
    return batch


def list_batches(session: Session, principal: Principal, *, after: str | None, limit: int) -> BatchList:
    """Return a page of the caller's batches, newest first; ``has_more`` says whether ``after=last_id`` gives more."""
    rows = BatchRepository(session).page(principal, after=after, limit=limit + 1)
    data = [BatchObject.of(b) for b in rows[:limit]]
    return BatchList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=len(rows) > limit,
    )


def cancel_batch(session: Session, batch_id: str, principal: Principal) -> Batch:
    """Cancel a batch: cancelling now, cancelled once finalize has written what completed; 409 if it has ended."""
    batch = get_batch(session, batch_id, principal)
    if batch.ending not in (None, BatchStatus.CANCELLED.value) or BatchStatus(batch.status).terminal:
        raise ConflictError(
            f"batch {batch_id} is {batch.status}: only a validating or in_progress batch can be cancelled",
            param="batch_id",
        )
    # The job's cancel runs ``ending.job_ended`` (a lifecycle hook), as a cancel through /jobs does.
    # A second cancel finds the job cancelled and the batch cancelling: the same answer again. A job that ended
    # some other way without its batch has nothing left to cancel.
    if not lifecycle.cancel(session, batch.job_id, "cancelled by request") and batch.ending is None:
        raise ConflictError(
            f"batch {batch_id}'s job {batch.job_id} has already ended: GET /jobs/{batch.job_id} says how",
            param="batch_id",
        )
    session.refresh(batch)
    return batch
