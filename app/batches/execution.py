"""The worker side of a batch: validate its file, run its tasks, finalize its output; and the reaper's requeue.

Called by the thin tasks in ``workers/tasks/batches.py``, which pass an ``EmbedRequests`` (the model lives in
the worker). Delivery is at least once, so every step is idempotent: validation inserts requests with
``ON CONFLICT DO NOTHING`` and moves the batch on with a conditional UPDATE; a task reads only the requests
without a result and writes results keyed by (batch, custom_id), counting only those it inserted; the end is
decided once (``ending.decide``) and finalize rewrites the same files. As for embedding jobs, no lock is held
while the model runs: one short transaction reads, another writes under the job's row lock.
"""

from __future__ import annotations

import bisect
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from app.artifacts.store import ArtifactNotFoundError, ArtifactStore
from app.batches import ending, output
from app.batches.contracts import EmbedCall, Embedded, EmbedRequests, RequestError
from app.batches.files import expiry, storage_key
from app.batches.repository import BatchRepository, FileRepository, RequestRepository, ResultRepository
from app.batches.request_checks import Prepared, RequestChecker
from app.batches.schemas import BatchObject
from app.batches.validation import LineLimits, chunk_starts, validate_lines
from app.catalog.resolver import InvalidModelNameError, UnknownModelError
from app.core.config import Settings
from app.core.db import Scope, enqueue
from app.core.queues import TaskName
from app.core.security import Principal
from app.core.store_outages import raise_if_unavailable
from app.jobs import lifecycle
from app.jobs.repository import JobRepository
from app.models.batch import Batch, BatchFile, BatchStatus, FilePurpose
from app.models.job import Job, JobStatus
from app.webhooks.service import notify_job_event

log = logging.getLogger(__name__)

# Requests inserted per statement while a validated file is stored.
INSERT_ROWS = 1000
# What loading or running a model may raise that fails the requests for it rather than retrying the task.
MODEL_ERRORS = (UnknownModelError, InvalidModelNameError, OSError, RuntimeError, ValueError, TypeError)


@dataclass(frozen=True)
class ChunkOutcome:
    """What one delivery of a task did: results newly written (completed, failed) and whether it ended the batch."""

    completed: int
    failed: int
    ended: bool = False


NOTHING = ChunkOutcome(0, 0)


def validate(scope: Scope, job_id: uuid.UUID, store: ArtifactStore, settings: Settings) -> BatchStatus | None:
    """Validate the batch's input file and send its tasks; the status it moved the batch to, or None."""
    with scope() as session:
        job = JobRepository(session).claim(job_id)
        batch = BatchRepository(session).of_job(job_id)
        if job is None or batch is None or batch.status != BatchStatus.VALIDATING.value or batch.ending:
            return None
        file = FileRepository(session).get(batch.input_file_id)
        batch_id, key = batch.id, file.storage_key if file is not None else None
    try:
        if key is None:
            raise ArtifactNotFoundError(store, batch_id)
        with store.open_read(key) as source:
            limits = LineLimits(settings.batch_max_lines, settings.max_json_depth, settings.max_json_string_chars)
            checked = validate_lines(source, limits)
    except ArtifactNotFoundError:
        message = "the input file was deleted before the batch read it: upload it again and create a new batch"
        errors = [{"code": "file_not_found", "message": message, "param": "input_file_id", "line": None}]
        return _fail_validation(scope, job_id, batch_id, errors)
    if checked.errors:
        errors = [e.as_dict() for e in checked.errors]
        if checked.error_count > len(errors):
            errors.append(
                {"code": "more_errors", "message": f"{checked.error_count} errors in all", "param": None, "line": None}
            )
        return _fail_validation(scope, job_id, batch_id, errors)
    starts = chunk_starts(checked.requests, settings.batch_task_tokens)
    with scope() as session:
        requests = RequestRepository(session)
        for i in range(0, len(checked.requests), INSERT_ROWS):
            requests.add_all(batch_id, [(r.line, r.custom_id, r.body) for r in checked.requests[i : i + INSERT_ROWS]])
        if not BatchRepository(session).start(batch_id, len(checked.requests), starts):
            return None
        JobRepository(session).add_counts(job_id, total=len(checked.requests))
        JobRepository(session).set_message(job_id, f"batch {batch_id}: {len(checked.requests)} requests")
        for start in starts:
            enqueue(session, TaskName.BATCH_RUN, str(job_id), start)
    return BatchStatus.IN_PROGRESS


def _fail_validation(scope: Scope, job_id: uuid.UUID, batch_id: str, errors: list[dict[str, Any]]) -> BatchStatus:
    with scope() as session:
        ending.decide(session, batch_id, job_id, BatchStatus.FAILED, errors)
    return BatchStatus.FAILED


def run_chunk(scope: Scope, job_id: uuid.UUID, start: int, embed: EmbedRequests, settings: Settings) -> ChunkOutcome:
    """Run the requests of the task that starts at line ``start`` and record their results."""
    with scope() as session:
        job = JobRepository(session).claim(job_id)
        batch = BatchRepository(session).of_job(job_id)
        if job is None or batch is None or batch.status != BatchStatus.IN_PROGRESS.value or batch.ending:
            return NOTHING
        if datetime.now(UTC) >= batch.expires_at:
            ending.decide(session, batch.id, job_id, BatchStatus.EXPIRED)
            return ChunkOutcome(0, 0, ended=True)
        batch_id = batch.id
        pending = RequestRepository(session).pending(batch_id, start, _next_start(batch, start))
        checker = RequestChecker(session, settings, _principal_of(job))
        prepared = [(r.line, r.custom_id, checker.prepare(r.body)) for r in pending]
    if not prepared:
        return NOTHING
    rows = _compute(prepared, embed)
    with scope() as session:
        if not JobRepository(session).lock_running(job_id):
            return NOTHING
        codes = ResultRepository(session).add_new(batch_id, rows)
        completed = sum(1 for c in codes if 200 <= c < 300)
        failed = len(codes) - completed
        counts = BatchRepository(session).add_counts(batch_id, completed=completed, failed=failed)
        JobRepository(session).add_counts(job_id, done=completed, failed=failed)
        ended = counts.finished and ending.decide(session, batch_id, job_id, BatchStatus.COMPLETED)
    return ChunkOutcome(completed, failed, ended)


def _next_start(batch: Batch, start: int) -> int | None:
    starts = list(batch.chunk_starts)
    i = bisect.bisect_right(starts, start)
    return starts[i] if i < len(starts) else None


def _principal_of(job: Job) -> Principal:
    """Return the caller who made the batch, as far as model access goes (their tenant, or an admin)."""
    return Principal(job.tenant, is_admin=bool(job.params.get("admin")), key_id=job.api_key_id)


def _compute(prepared: list[tuple[int, str, Prepared | RequestError]], embed: EmbedRequests) -> list[dict[str, Any]]:
    """Return a result row per request: the requests for one model share the worker's forward passes."""
    outcomes: dict[int, Embedded | RequestError] = {}
    by_model: dict[str, list[tuple[int, EmbedCall]]] = {}
    for line, _, item in prepared:
        if isinstance(item, RequestError):
            outcomes[line] = item
        else:
            by_model.setdefault(item.model, []).append((line, item.call))
    for model, calls in by_model.items():
        try:
            results = embed(model, [call for _, call in calls])
        except MODEL_ERRORS as exc:
            raise_if_unavailable(exc, f"batch requests for model {model}")  # waited out: nothing is written
            log.exception("batch requests for model %s failed", model)
            status = 404 if isinstance(exc, UnknownModelError) else 500
            code = "model_not_found" if status == 404 else "inference_failed"
            results = [RequestError(status, f"{type(exc).__name__}: {exc}", code, "model")] * len(calls)
        for (line, _), result in zip(calls, results, strict=True):
            outcomes[line] = result
    rows = []
    for line, custom_id, item in prepared:
        outcome = outcomes[line]
        row: dict[str, Any] = {"custom_id": custom_id, "line": line}
        if isinstance(outcome, RequestError):
            row |= {"status_code": outcome.status_code, "error": outcome.body()}
        else:
            assert isinstance(item, Prepared)
            vectors = outcome.vectors.astype("<f4", copy=False)
            row |= {
                "status_code": 200,
                "model": item.model,
                "vectors": vectors.tobytes(),
                "dimension": int(vectors.shape[1]),
                "prompt_tokens": outcome.prompt_tokens,
            }
        rows.append(row)
    return rows


def finalize(scope: Scope, job_id: uuid.UUID, store: ArtifactStore, settings: Settings) -> BatchStatus | None:
    """Write the batch's output and error files and give it its terminal status; None if it had one."""
    with scope() as session:
        # Under the job's row lock: a task writing results now waits, then finds them answered.
        JobRepository(session).lock(job_id)
        batch = BatchRepository(session).of_job(job_id)
        if batch is None or batch.ending is None or BatchStatus(batch.status).terminal:
            return None
        status = BatchStatus(batch.ending)
        batch_id, tenant, expires_after_s = batch.id, batch.tenant, batch.output_expires_after_s
        if status is not BatchStatus.COMPLETED:
            _mark_not_run(session, batch_id, status)
    written = _write_files(scope, store, batch_id, tenant, expires_after_s)
    with scope() as session:
        files = FileRepository(session)
        for file in written.values():
            files.add_once(file)
        output_file = written.get("output")
        error_file = written.get("errors")
        if not BatchRepository(session).end(
            batch_id,
            status,
            output_file_id=output_file.id if output_file else None,
            error_file_id=error_file.id if error_file else None,
        ):
            return None
        _finish_job(session, job_id, status)
        batch = BatchRepository(session).of_job(job_id)
        assert batch is not None
        session.refresh(batch)
        notify_job_event(session, job_id, f"batch.{status.value}", BatchObject.of(batch).model_dump(), settings)
    return status


def _mark_not_run(session: Session, batch_id: str, status: BatchStatus) -> None:
    code, message = output.NOT_RUN_ERRORS[status.value]
    requests = RequestRepository(session)
    results = ResultRepository(session)
    while True:
        unanswered = requests.pending(batch_id, 0, None, limit=INSERT_ROWS)
        if not unanswered:
            return
        results.add_new(
            batch_id,
            [
                {
                    "custom_id": r.custom_id,
                    "line": r.line,
                    "status_code": output.NOT_RUN,
                    "error": {"code": code, "message": message},
                }
                for r in unanswered
            ],
        )


def _write_files(
    scope: Scope, store: ArtifactStore, batch_id: str, tenant: str, expires_after_s: int | None
) -> dict[str, BatchFile]:
    """Write the output and error files (each only if it has a line); return their rows, not yet inserted, each
    expiring ``expires_after_s`` after now (the batch's output_expires_after; None: never)."""
    ids = {kind: f"file-{uuid.uuid5(uuid.NAMESPACE_URL, f'embedq:{batch_id}:{kind}').hex[:24]}" for kind in _KINDS}
    keys = {kind: storage_key(tenant, file_id) for kind, file_id in ids.items()}
    sizes = dict.fromkeys(_KINDS, 0)
    with scope() as session, store.open_write(keys["output"]) as out, store.open_write(keys["errors"]) as err:
        for row in ResultRepository(session).in_line_order(batch_id):
            kind = "output" if output.is_output(row) else "errors"
            data = output.line_of(batch_id, row)
            (out if kind == "output" else err).write(data)
            sizes[kind] += len(data)
    written = {}
    expires_at = expiry(expires_after_s)
    for kind in _KINDS:
        if sizes[kind] == 0:
            store.delete(keys[kind])
            continue
        written[kind] = BatchFile(
            id=ids[kind],
            tenant=tenant,
            filename=f"{batch_id}_{'output' if kind == 'output' else 'error'}.jsonl",
            purpose=FilePurpose.BATCH_OUTPUT.value,
            bytes=sizes[kind],
            storage_key=keys[kind],
            expires_at=expires_at,
        )
    return written


_KINDS = ("output", "errors")


def _finish_job(session: Session, job_id: uuid.UUID, status: BatchStatus) -> None:
    batch = BatchRepository(session).of_job(job_id)
    assert batch is not None
    message = (
        f"batch {batch.id} {status.value}: {batch.completed} of {batch.total} requests completed, {batch.failed} failed"
    )
    if status is BatchStatus.COMPLETED:
        lifecycle.finish(session, job_id, JobStatus.SUCCEEDED, message=message, error=None, progress=100.0)
    elif status is BatchStatus.EXPIRED:
        error = "the batch expired: its completion window ended before every request ran"
        lifecycle.finish(session, job_id, JobStatus.FAILED, message=message, error=error)
    elif status is BatchStatus.FAILED:
        errors = batch.errors or []
        first = errors[0]["message"] if errors else "validation failed"
        lifecycle.finish(session, job_id, JobStatus.FAILED, message=message, error=f"the batch failed: {first}")
    # A cancelled batch's job was cancelled already: that is what cancelled the batch.


def requeue_batch(session: Session, job: Job) -> int:
    """Re-enqueue whatever a batch whose tasks were lost has left; return how many tasks (the reaper's entry).

    Validating: validation again. In progress: every task with a request still unanswered (a lost one that
    turns up after all only costs a forward pass), or the end if the window has passed. Ending: finalize.
    """
    batch = BatchRepository(session).of_job(job.id)
    if batch is None or BatchStatus(batch.status).terminal:
        return 0
    if batch.ending is not None:
        enqueue(session, TaskName.BATCH_FINALIZE, str(job.id))
        return 1
    if batch.status == BatchStatus.VALIDATING.value:
        enqueue(session, TaskName.BATCH_VALIDATE, str(job.id))
        return 1
    if datetime.now(UTC) >= batch.expires_at:
        return int(ending.decide(session, batch.id, job.id, BatchStatus.EXPIRED))
    requests = RequestRepository(session)
    starts = list(batch.chunk_starts)
    lost = [
        start
        for i, start in enumerate(starts)
        if requests.has_pending(batch.id, start, starts[i + 1] if i + 1 < len(starts) else None)
    ]
    for start in lost:
        enqueue(session, TaskName.BATCH_RUN, str(job.id), start)
    if not lost:
        return int(ending.decide(session, batch.id, job.id, BatchStatus.COMPLETED))
    return len(lost)
