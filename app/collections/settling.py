"""How an ingest or reembed job moves on: its errors and progress, then index build, version switch, end.

The upload writer, the reembed request and the worker's batches all feed a job; whichever of them
accounts for its last document settles it. Every write to the job's row goes through ``app.jobs``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.orm import Session

from app.collections.repository import CollectionRepository
from app.collections.vector_store import VectorStore
from app.core.config import Settings
from app.core.db import enqueue
from app.core.queues import TaskName
from app.jobs import lifecycle
from app.jobs.repository import Counts, JobRepository
from app.models.collection import CollectionVersion, IndexStatus, VersionStatus
from app.models.job import Job, JobKind, JobStatus

INDEXING = "all documents are in; building the HNSW search index"

DocumentError = tuple[str | None, int | None, str]
"""(document id, line of the upload, error)."""


def record_errors(session: Session, job_id: uuid.UUID, errors: Sequence[DocumentError], settings: Settings) -> None:
    """Record errors in the job's error file, and the job's first EMBEDQ_INGEST_ERRORS_IN_VIEW in its row."""
    if not errors:
        return
    CollectionRepository(session).add_errors(job_id, errors)
    keep = settings.ingest_errors_in_view
    sample = [{"document_id": d, "line": line, "error": e} for d, line, e in errors[:keep]]
    if sample:
        JobRepository(session).add_item_errors(job_id, sample, keep)


def report_progress(session: Session, job_id: uuid.UUID, counts: Counts) -> None:
    """Send the job's ``job.progress`` milestones its documents reached, once the upload is complete.

    While an upload still streams its total grows, so a percentage of it would mean nothing yet.
    """
    job = JobRepository(session).get(job_id)
    milestones = list(job.params.get("progress_milestones") or []) if job is not None else []
    if milestones and counts.input_complete:
        lifecycle.report_progress(session, job_id, counts.progress, milestones)


def settle(session: Session, job_id: uuid.UUID, settings: Settings) -> JobStatus | None:
    """Move a job whose every document is accounted for on: index build, version switch, terminal status.

    Call with the job's row locked. Returns the terminal status it gave the job, or None.
    """
    repo = CollectionRepository(session)
    job = JobRepository(session).get(job_id)
    if job is None or job.status != JobStatus.RUNNING.value:
        return None
    if not job.input_complete or job.done + job.failed < job.total:
        return None
    # Locked: the index build holds this row while it builds and marks the index ready. A status read
    # before that commit and written after it would mark a built index as building again, and the job
    # whose build had just finished would wait for a build that never comes.
    version = repo.version(int(job.params["version_id"]), lock=True)
    if version is None:
        return None
    if job.kind == JobKind.REEMBED.value and job.failed > 0:
        return _fail_reembed(session, job, version)
    if version.index_status != IndexStatus.READY.value and VectorStore(session).vector_table_exists(version.id):
        if job.message != INDEXING:  # once per job; the reaper re-enqueues a lost build
            repo.set_index_status(version.id, IndexStatus.BUILDING)
            JobRepository(session).set_message(job_id, INDEXING)
            enqueue(session, TaskName.INGEST_INDEX, str(job_id), version.id)
        return None
    if job.kind == JobKind.REEMBED.value:
        _switch_to(session, version)
    return _finish(session, job)


def _finish(session: Session, job: Job) -> JobStatus | None:
    upload_error = job.params.get("upload_error")
    verb = "re-embedded" if job.kind == JobKind.REEMBED.value else "ingested"
    message = (
        f"{verb} {job.done - job.skipped} of {job.total} documents ({job.skipped} unchanged, {job.failed} failed) "
        f"into {job.chunks_done} chunks"
    )
    if job.params.get("objects_unchanged"):
        message += f"; {job.params['objects_unchanged']} source objects unchanged since the last sync"
    if job.params.get("deleted_documents"):
        message += f"; {job.params['deleted_documents']} documents of vanished objects removed"
    error = None
    if job.failed:
        first = CollectionRepository(session).first_error(job.id) or "unknown"
        error = f"{job.failed} documents failed; first: {first} (see links.errors)"
    if upload_error:
        error = f"{upload_error}" + (f"; {error}" if error else "")
    failed = bool(upload_error) or (job.failed > 0 and job.done == 0)
    status = JobStatus.FAILED if failed else JobStatus.SUCCEEDED
    return status if lifecycle.finish(session, job.id, status, message=message, error=error, progress=100.0) else None


def _switch_to(session: Session, version: CollectionVersion) -> None:
    """Make ``version`` the one search reads; the one it replaces is retired and its table dropped."""
    repo = CollectionRepository(session)
    for old in repo.versions(version.collection_id):
        if old.status == VersionStatus.ACTIVE.value and old.id != version.id:
            repo.set_version_status(old.id, VersionStatus.RETIRED)
            VectorStore(session).drop_vector_table(old.id)
    repo.set_version_status(version.id, VersionStatus.ACTIVE)


def _fail_reembed(session: Session, job: Job, version: CollectionVersion) -> JobStatus | None:
    repo = CollectionRepository(session)
    repo.set_version_status(version.id, VersionStatus.FAILED)
    VectorStore(session).drop_vector_table(version.id)
    error = (
        f"{job.failed} of {job.total} documents could not be re-embedded with {version.model}; first: "
        f"{repo.first_error(job.id) or 'unknown'}. Search still uses the previous version"
    )
    message = f"re-embedded {job.done} of {job.total} documents; the new version was discarded"
    finished = lifecycle.finish(session, job.id, JobStatus.FAILED, message=message, error=error, progress=100.0)
    return JobStatus.FAILED if finished else None


def cancel_jobs(session: Session, jobs: Sequence[Job], reason: str) -> None:
    """Cancel active jobs (their queued batches are skipped), each announced once."""
    for job in jobs:
        lifecycle.cancel(session, job.id, reason)
