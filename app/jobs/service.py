"""Jobs: create, read, cancel, and run one batch of an embedding job (called by the worker's task)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.catalog.access import JOB_API_ERRORS, check_embedding_model
from app.catalog.resolver import InvalidModelNameError, UnknownModelError
from app.core.config import Settings, get_settings
from app.core.db import enqueue
from app.core.errors import ConflictError, InvalidRequestError, NotFoundError
from app.core.queues import TaskName
from app.core.security import Principal
from app.core.store_outages import raise_if_unavailable
from app.jobs import lifecycle
from app.jobs.batching import length_batches
from app.jobs.fairness import batch_priorities
from app.jobs.lifecycle import NOTHING_DONE, BatchOutcome
from app.jobs.repository import Counts, JobRepository
from app.jobs.schemas import EmbeddingJobCreate, EncodingFormat, JobResults, ResultItem
from app.keys.service import admit_job, hold_admission
from app.models.job import Job, JobKind, JobStatus
from app.observability.tracing import annotate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Encoded:
    """What a model made of a batch of texts: float32 vectors [len(texts), dim] in input order, and its tokens."""

    vectors: np.ndarray
    tokens: int


Encode = Callable[[str, list[str]], Encoded]
"""(model name, texts) -> their vectors and token count."""


def _request_hash(payload: EmbeddingJobCreate, model: str) -> str:
    body = {"input": payload.input, "model": model, "webhook_url": str(payload.webhook_url or "")}
    if payload.progress_milestones:
        body["progress_milestones"] = payload.progress_milestones
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def create_embedding_job(
    session: Session, payload: EmbeddingJobCreate, settings: Settings, principal: Principal
) -> tuple[Job, bool]:
    """Return (job, created): a new queued job of the caller's tenant, or its earlier one with the same key."""
    if len(payload.input) > settings.max_inputs_per_job:
        raise InvalidRequestError(
            f"input has {len(payload.input)} items; at most {settings.max_inputs_per_job} per job "
            "(EMBEDQ_MAX_INPUTS_PER_JOB): split it into several jobs",
            param="input",
        )
    too_long = next((i for i, t in enumerate(payload.input) if len(t) > settings.max_input_chars), None)
    if too_long is not None:
        raise InvalidRequestError(
            f"input[{too_long}] has {len(payload.input[too_long])} characters; at most "
            f"{settings.max_input_chars} (EMBEDQ_MAX_INPUT_CHARS): chunk it first",
            param=f"input[{too_long}]",
        )
    model = payload.model or settings.default_model
    check_embedding_model(model, settings, principal, JOB_API_ERRORS, session)
    digest = _request_hash(payload, model)
    repo = JobRepository(session)
    if payload.idempotency_key is not None:
        # Looked up under the key's admission lock: a request with the same idempotency key that took the
        # key's last slot has committed its job by the time we hold it, and this one gets that job, not a 429.
        hold_admission(session, principal)
        existing = repo.get_by_idempotency_key(principal.tenant, payload.idempotency_key)
        if existing is not None:
            return _same_request(existing, digest), False
    admit_job(session, principal, settings)
    lengths = [len(t) for t in payload.input]
    batches = length_batches(range(len(payload.input)), lengths, settings.job_batch_size, settings.job_batch_chars)
    priorities = batch_priorities(session, principal.tenant, settings, len(batches))
    params = {
        "batch_size": settings.job_batch_size,
        "batch_chars": settings.job_batch_chars,
        **({"progress_milestones": payload.progress_milestones} if payload.progress_milestones else {}),
    }
    try:
        with session.begin_nested():
            job = lifecycle.create(
                session,
                principal,
                JobKind.EMBEDDINGS,
                model=model,
                params=params,
                inputs=payload.input,
                total=len(payload.input),
                webhook_url=str(payload.webhook_url) if payload.webhook_url else None,
                idempotency_key=payload.idempotency_key,
                request_hash=digest,
            )
    except IntegrityError:
        # Another request with the same key committed between our lookup and insert.
        existing = repo.get_by_idempotency_key(principal.tenant, payload.idempotency_key or "")
        if existing is None:
            raise
        return _same_request(existing, digest), False
    annotate(job_id=str(job.id), kind=job.kind, model=model, batch_size=job.total, tenant=job.tenant)
    for idxs, priority in zip(batches, priorities, strict=True):
        enqueue(session, TaskName.EMBED_BATCH, str(job.id), idxs, priority=priority)
    return job, True


def _same_request(existing: Job, digest: str) -> Job:
    if existing.request_hash != digest:
        raise ConflictError(
            f"idempotency_key {existing.idempotency_key!r} was already used for a different request "
            f"(job {existing.id}): use a new key",
            param="idempotency_key",
        )
    return existing


def get_job(session: Session, job_id: uuid.UUID, principal: Principal) -> Job:
    """Return the job if ``principal`` may see it; another tenant's job is a 404, as if it did not exist."""
    job = JobRepository(session).get_visible(job_id, principal)
    if job is None:
        raise NotFoundError(f"no job with id {job_id}", param="job_id")
    return job


def list_jobs(
    session: Session,
    principal: Principal,
    *,
    status: JobStatus | None,
    kind: JobKind | None,
    limit: int,
    offset: int,
) -> tuple[list[Job], int | None]:
    """Return a page of the jobs ``principal`` may see, newest first, and the next page's offset (None on the last)."""
    jobs = JobRepository(session).list_jobs(
        principal,
        status=status.value if status else None,
        kind=kind.value if kind else None,
        limit=limit + 1,
        offset=offset,
    )
    return jobs[:limit], (offset + limit if len(jobs) > limit else None)


def requeue_embedding_batches(session: Session, job: Job) -> int:
    """Re-enqueue an embedding job's unresolved inputs in length-sorted batches; return how many batches.

    For the reaper, when the job's tasks were lost. Redelivery is harmless (see ``run_embedding_batch``), so
    a batch that was not lost after all only costs a forward pass. A job with nothing left to embed is
    finalized here.
    """
    repo = JobRepository(session)
    size = int(job.params.get("batch_size") or 1)
    chars = job.params.get("batch_chars")  # None for a job queued before tasks had a character bound
    pending = repo.pending_lengths(job.id)
    batches = length_batches([i for i, _ in pending], [n for _, n in pending], size, chars)
    priorities = batch_priorities(session, job.tenant, get_settings(), len(batches), counted=True)
    for idxs, priority in zip(batches, priorities, strict=True):
        enqueue(session, TaskName.EMBED_BATCH, str(job.id), idxs, priority=priority)
    if not batches and repo.claim(job.id) is not None:
        counts = repo.add_counts(job.id, done=0, failed=0)
        if counts.finished:
            _finalize(repo, job.id, counts)
    return len(batches)


def cancel_job(session: Session, job_id: uuid.UUID, principal: Principal) -> Job:
    """Cancel a queued or running job; cancelling a finished job is refused with 409."""
    job = get_job(session, job_id, principal)
    if not lifecycle.cancel(session, job_id):
        session.refresh(job)
        if job.status != JobStatus.CANCELLED.value:
            raise ConflictError(f"job {job_id} already ended with status {job.status}; nothing to cancel")
    session.refresh(job)
    return job


def job_results(
    session: Session,
    job_id: uuid.UUID,
    principal: Principal,
    *,
    offset: int,
    limit: int,
    encoding_format: EncodingFormat,
) -> JobResults:
    job = get_job(session, job_id, principal)
    rows = JobRepository(session).results_page(job_id, offset=offset, limit=limit)
    items = [
        ResultItem(index=r.idx, embedding=_encode_vector(r.embedding, encoding_format), error=r.error) for r in rows
    ]
    next_offset = offset + limit if offset + limit < job.total else None
    return JobResults(
        job_id=job.id,
        status=JobStatus(job.status),
        total=job.total,
        encoding_format=encoding_format,
        data=items,
        next_offset=next_offset,
    )


def _encode_vector(vector: np.ndarray | None, fmt: EncodingFormat) -> list[float] | str | None:
    if vector is None:
        return None
    if fmt is EncodingFormat.BASE64:
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return np.asarray(vector, dtype=np.float32).tolist()


def run_embedding_batch(
    scope: Callable[[], AbstractContextManager[Session]],
    job_id: uuid.UUID,
    idxs: Sequence[int],
    encode: Encode,
) -> BatchOutcome:
    """Embed the inputs of a job at ``idxs`` and record them; a redelivered batch changes nothing.

    Two short transactions around the forward pass, so no row lock is held while the model runs:
    the first claims the job and reads what is still pending, the second writes under the job's row
    lock, counts, and finalizes the job when this batch completed it.
    """
    with scope() as session:
        repo = JobRepository(session)
        job = repo.claim(job_id)
        if job is None:
            return NOTHING_DONE
        model, tenant = job.model, job.tenant
        milestones: list[int] = list(job.params.get("progress_milestones") or [])
        pending = repo.pending_inputs(job_id, idxs)
    if not pending:
        return NOTHING_DONE
    todo = [i for i, _ in pending]
    vectors: np.ndarray | None = None
    tokens = 0
    error: str | None = None
    try:
        encoded = encode(model, [t for _, t in pending])
        vectors, tokens = encoded.vectors, encoded.tokens
    except (UnknownModelError, InvalidModelNameError, OSError, RuntimeError, ValueError) as exc:
        raise_if_unavailable(exc, f"job {job_id}: model {model}")  # the task waits it out; nothing is written
        log.exception("job %s: a batch of %d inputs failed", job_id, len(todo))
        error = f"{type(exc).__name__}: {exc}"
    annotate(
        job_id=str(job_id),
        kind=JobKind.EMBEDDINGS.value,
        model=model,
        batch_size=len(todo),
        tokens=tokens,
        tenant=tenant,
    )
    with scope() as session:
        repo = JobRepository(session)
        if not repo.lock_running(job_id):
            return NOTHING_DONE
        written = repo.write_embeddings(job_id, todo, vectors) if vectors is not None else 0
        failed = repo.fail_inputs(job_id, todo, error) if error is not None else 0
        counts = repo.add_counts(job_id, done=written, failed=failed, tokens=tokens if written else 0)
        if milestones:
            lifecycle.report_progress(session, job_id, counts.progress, milestones)
        status = None
        if counts.finished:
            status = _finalize(repo, job_id, counts)
    return BatchOutcome(written, failed, finished_status=status)


def _finalize(repo: JobRepository, job_id: uuid.UUID, counts: Counts) -> JobStatus | None:
    """Return the terminal status this batch gave the job, or None if another path finished it."""
    if counts.failed == 0:
        status, error = JobStatus.SUCCEEDED, None
    else:
        status, error = (
            JobStatus.FAILED,
            f"{counts.failed} of {counts.total} inputs failed; first error: " + (repo.first_error(job_id) or "unknown"),
        )
    message = f"embedded {counts.done} of {counts.total} inputs"
    return status if lifecycle.finish(repo.session, job_id, status, message=message, error=error) else None
