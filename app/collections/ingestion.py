"""The worker side of ingestion: run one batch of an ingest or reembed job, build the index, settle the job.

Called by the thin tasks in ``workers/tasks/ingest.py``, which pass a ``LoadModel`` (the torch runtime lives
in the worker). Every batch runs in two short transactions around the model, so no lock is held while it
computes: the first reads what is pending; the second locks the job, claims the batch (pending -> done,
so a redelivered task changes nothing, counts included), writes chunks and vectors with COPY and
``ON CONFLICT DO NOTHING`` on (document, chunk index), and settles the job when this batch completed it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from sqlalchemy.orm import Session

from app.catalog.resolver import InvalidModelNameError, UnknownModelError
from app.collections.repository import ChunkRow, CollectionRepository, JobCounters, PendingDocument, Vectors
from app.core.config import Settings
from app.core.db import enqueue
from app.core.queues import TaskName
from app.jobs.service import on_job_finished, on_job_progress
from app.models.collection import CollectionVersion, IndexStatus, VersionStatus
from app.models.job import Job, JobKind, JobStatus

log = logging.getLogger(__name__)

INDEXING = "all documents are in; building the HNSW search index"

Scope = Callable[[], AbstractContextManager[Session]]

# What a model may raise that fails the batch's documents rather than retrying the task.
MODEL_ERRORS = (UnknownModelError, InvalidModelNameError, OSError, RuntimeError, ValueError, TypeError)


@dataclass(frozen=True)
class ChunkPiece:
    """One chunk of a document: its text, its character span in the document, and its token count."""

    text: str
    start: int
    end: int
    token_count: int


class IngestModel(Protocol):
    """What ingestion needs from a loaded model (implemented in the worker around its Encoder)."""

    dimension: int

    def chunk(self, texts: list[str], max_tokens: int, overlap_tokens: int) -> list[list[ChunkPiece]]:
        """Return each text's chunks, in order, by the model's own tokenizer."""
        ...

    def embed(self, texts: list[str]) -> Vectors:
        """Return float32 [len(texts), dimension] document vectors (the family's passage prompt applied),
        with each text's sparse token weights when the model has a BGE-M3 sparse head."""
        ...


LoadModel = Callable[[str], IngestModel]


@dataclass(frozen=True)
class BatchOutcome:
    documents: int
    chunks: int
    failed: int
    finished: JobStatus | None = None


_NOTHING = BatchOutcome(0, 0, 0)


@dataclass(frozen=True)
class _Work:
    job_kind: str
    model: str
    collection_id: int
    version_id: int
    max_tokens: int
    overlap_tokens: int
    document_ids: list[int]
    hashes: dict[int, str]


def _read_work(repo: CollectionRepository, job_id: uuid.UUID, seq: int) -> _Work | None:
    job = repo.session.get(Job, job_id)
    if job is None or job.status != JobStatus.RUNNING.value:
        return None
    batch = repo.batch(job_id, seq)
    if batch is None or batch.state != "pending":
        return None
    version = repo.version(int(job.params["version_id"]))
    collection = repo.get_by_id(int(job.params["collection_id"]))
    if version is None or collection is None:
        return None
    return _Work(
        job_kind=job.kind,
        model=version.model,
        collection_id=collection.id,
        version_id=version.id,
        max_tokens=collection.max_tokens,
        overlap_tokens=collection.overlap_tokens,
        document_ids=list(batch.document_ids),
        hashes=dict(zip(batch.document_ids, batch.content_hashes, strict=True)),
    )


def run_ingest_batch(scope: Scope, job_id: uuid.UUID, seq: int, load: LoadModel, settings: Settings) -> BatchOutcome:
    """Chunk and embed batch ``seq`` of an ingest job and store it; a redelivered batch changes nothing."""
    with scope() as session:
        repo = CollectionRepository(session)
        work = _read_work(repo, job_id, seq)
        if work is None:
            return _NOTHING
        pending = [d for d in repo.pending_documents(work.document_ids) if work.hashes.get(d.id) == d.content_hash]
    pieces: list[list[ChunkPiece]] = []
    vectors = Vectors(np.empty((0, 0), dtype=np.float32))
    dimension, error = 0, None
    if pending:
        try:
            model = load(work.model)
            dimension = model.dimension
            pieces = model.chunk([d.text for d in pending], work.max_tokens, work.overlap_tokens)
            vectors = model.embed([p.text for doc_pieces in pieces for p in doc_pieces])
        except MODEL_ERRORS as exc:
            log.exception("ingest job %s batch %d failed", job_id, seq)
            error = f"embedding failed ({type(exc).__name__}: {exc})"
    with scope() as session:
        repo = CollectionRepository(session)
        job = repo.lock_job(job_id)
        if job is None or job.status != JobStatus.RUNNING.value or not repo.claim_batch(job_id, seq):
            return _NOTHING
        if error is None and pending:
            error = _ensure_vector_table(repo, work.version_id, work.model, dimension)
        # Only documents still pending at the content we read are ours to write or fail: one re-uploaded
        # meanwhile belongs to the newer batch.
        ours = repo.lock_pending({d.id: d.content_hash for d in pending})
        if error is None:
            written, failures = _store_chunks(repo, work, pending, pieces, vectors, ours)
        else:
            written, failures = {}, dict.fromkeys(ours, error)
        _record_failures(repo, job_id, failures, settings)
        chunks_written = sum(written.values())
        chunks_failed = sum(len(p) for d, p in zip(pending, pieces, strict=False) if d.id in failures)
        counts = repo.add_job_counts(
            job_id,
            done=len(work.document_ids) - len(failures),
            failed=len(failures),
            chunks_total=chunks_written + chunks_failed,
            chunks_done=chunks_written,
        )
        report_progress(session, job_id, counts)
        status = settle(session, job_id, settings)
    return BatchOutcome(len(written), chunks_written, len(failures), status)


def _store_chunks(
    repo: CollectionRepository,
    work: _Work,
    pending: Sequence[PendingDocument],
    pieces: Sequence[Sequence[ChunkPiece]],
    vectors: Vectors,
    ours: set[int],
) -> tuple[dict[int, int], dict[int, str]]:
    """Replace our documents' chunks with the new ones; return (chunks per document, failures)."""
    rows: list[ChunkRow] = []
    keep: list[int] = []
    written: dict[int, int] = {}
    failures: dict[int, str] = {}
    offset = 0
    for doc, doc_pieces in zip(pending, pieces, strict=True):
        if doc.id in ours and not doc_pieces:
            failures[doc.id] = "the text has no tokens this model knows"
        elif doc.id in ours:
            rows += [ChunkRow(doc.id, i, p.text, p.token_count, p.start, p.end) for i, p in enumerate(doc_pieces)]
            keep += range(offset, offset + len(doc_pieces))
            written[doc.id] = len(doc_pieces)
        offset += len(doc_pieces)
    repo.delete_chunks(work.collection_id, sorted(written))
    repo.write_chunks(work.version_id, rows, vectors.take(keep))
    repo.mark_ready(written)
    return written, failures


def _record_failures(
    repo: CollectionRepository, job_id: uuid.UUID, failures: dict[int, str], settings: Settings
) -> None:
    if not failures:
        return
    for error in set(failures.values()):
        repo.mark_failed([i for i, e in failures.items() if e == error], error)
    names = repo.external_ids(list(failures))
    errors = [(names.get(i), None, e) for i, e in sorted(failures.items())]
    repo.add_errors(job_id, errors, settings.ingest_errors_in_view)


def run_reembed_batch(scope: Scope, job_id: uuid.UUID, seq: int, load: LoadModel, settings: Settings) -> BatchOutcome:
    """Embed the chunks of batch ``seq``'s documents with the new version's model; redelivery changes nothing."""
    with scope() as session:
        repo = CollectionRepository(session)
        work = _read_work(repo, job_id, seq)
        if work is None:
            return _NOTHING
        chunks = repo.chunks_of(work.document_ids)
    vectors = Vectors(np.empty((0, 0), dtype=np.float32))
    dimension, error = 0, None
    if chunks:
        try:
            model = load(work.model)
            dimension = model.dimension
            vectors = model.embed([t for _, t in chunks])
        except MODEL_ERRORS as exc:
            log.exception("reembed job %s batch %d failed", job_id, seq)
            error = f"embedding failed ({type(exc).__name__}: {exc})"
    with scope() as session:
        repo = CollectionRepository(session)
        job = repo.lock_job(job_id)
        if job is None or job.status != JobStatus.RUNNING.value or not repo.claim_batch(job_id, seq):
            return _NOTHING
        if error is None and chunks:
            error = _ensure_vector_table(repo, work.version_id, work.model, dimension)
        written = 0
        if error is None:
            repo.write_vectors(work.version_id, [c for c, _ in chunks], vectors)
            written = len(chunks)
        else:
            names = repo.external_ids(work.document_ids)
            errors = [(names.get(i), None, error) for i in work.document_ids]
            repo.add_errors(job_id, errors, settings.ingest_errors_in_view)
        failed = 0 if error is None else len(work.document_ids)
        counts = repo.add_job_counts(
            job_id,
            done=len(work.document_ids) - failed,
            failed=failed,
            chunks_total=len(chunks),
            chunks_done=written,
        )
        report_progress(session, job_id, counts)
        status = settle(session, job_id, settings)
    return BatchOutcome(len(work.document_ids) - failed, written, failed, status)


def report_progress(session: Session, job_id: uuid.UUID, counts: JobCounters) -> None:
    """Send the job's ``job.progress`` milestones its documents reached, once the upload is complete.

    While an upload still streams its total grows, so a percentage of it would mean nothing yet.
    """
    job = session.get(Job, job_id)
    milestones = list(job.params.get("progress_milestones") or []) if job is not None else []
    if milestones and counts.input_complete:
        on_job_progress(session, job_id, counts.progress, milestones)


def _ensure_vector_table(repo: CollectionRepository, version_id: int, model: str, dimension: int) -> str | None:
    """Create the version's vector table on first use; return an error if the model's dimension differs."""
    version = repo.version(version_id, lock=True)
    assert version is not None
    if version.dimension is None:
        repo.set_dimension(version_id, dimension)
        repo.create_vector_table(version_id, dimension, fresh=True)
    elif version.dimension != dimension:
        return (
            f"model {model} now gives {dimension}-dimensional vectors but this collection version holds "
            f"{version.dimension}-dimensional ones: restore the model, or reembed the collection"
        )
    return None


def build_index(scope: Scope, job_id: uuid.UUID, version_id: int, settings: Settings) -> JobStatus | None:
    """Build a version's HNSW index (if missing), then settle the job that waited for it."""
    with scope() as session:
        repo = CollectionRepository(session)
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.RUNNING.value:
            return None
        if repo.vector_table_exists(version_id):
            repo.build_index(
                version_id, m=settings.hnsw_m, ef_construction=settings.hnsw_ef_construction,
                memory=settings.hnsw_build_memory,
            )  # fmt: skip
        repo.set_index_status(version_id, IndexStatus.READY)
    with scope() as session:
        if CollectionRepository(session).lock_job(job_id) is None:
            return None
        return settle(session, job_id, settings)


def settle(session: Session, job_id: uuid.UUID, settings: Settings) -> JobStatus | None:
    """Move a job whose every document is accounted for on: index build, version switch, terminal status.

    Call with the job's row locked. Returns the terminal status it gave the job, or None.
    """
    repo = CollectionRepository(session)
    job = session.get(Job, job_id)
    if job is None or job.status != JobStatus.RUNNING.value:
        return None
    if not job.input_complete or job.done + job.failed < job.total:
        return None
    version = repo.version(int(job.params["version_id"]))
    if version is None:
        return None
    if job.kind == JobKind.REEMBED.value and job.failed > 0:
        return _fail_reembed(repo, job, version)
    if version.index_status != IndexStatus.READY.value and repo.vector_table_exists(version.id):
        if job.message != INDEXING:  # once per job; the reaper re-enqueues a lost build
            repo.set_index_status(version.id, IndexStatus.BUILDING)
            repo.set_job_message(job_id, INDEXING)
            enqueue(session, TaskName.INGEST_INDEX, str(job_id), version.id)
        return None
    if job.kind == JobKind.REEMBED.value:
        _switch_to(repo, version)
    return _finish(repo, job)


def _finish(repo: CollectionRepository, job: Job) -> JobStatus | None:
    upload_error = job.params.get("upload_error")
    verb = "re-embedded" if job.kind == JobKind.REEMBED.value else "ingested"
    message = (
        f"{verb} {job.done - job.skipped} of {job.total} documents ({job.skipped} unchanged, {job.failed} failed) "
        f"into {job.chunks_done} chunks"
    )
    error = None
    if job.failed:
        error = f"{job.failed} documents failed; first: {repo.first_error(job.id) or 'unknown'} (see links.errors)"
    if upload_error:
        error = f"{upload_error}" + (f"; {error}" if error else "")
    failed = bool(upload_error) or (job.failed > 0 and job.done == 0)
    status = JobStatus.FAILED if failed else JobStatus.SUCCEEDED
    if not repo.finish_job(job.id, status, message=message, error=error):
        return None
    on_job_finished(repo.session, job.id, status)
    return status


def _switch_to(repo: CollectionRepository, version: CollectionVersion) -> None:
    """Make ``version`` the one search reads; the one it replaces is retired and its table dropped."""
    for old in repo.versions(version.collection_id):
        if old.status == VersionStatus.ACTIVE.value and old.id != version.id:
            repo.set_version_status(old.id, VersionStatus.RETIRED)
            repo.drop_vector_table(old.id)
    repo.set_version_status(version.id, VersionStatus.ACTIVE)


def _fail_reembed(repo: CollectionRepository, job: Job, version: CollectionVersion) -> JobStatus | None:
    repo.set_version_status(version.id, VersionStatus.FAILED)
    repo.drop_vector_table(version.id)
    error = (
        f"{job.failed} of {job.total} documents could not be re-embedded with {version.model}; first: "
        f"{repo.first_error(job.id) or 'unknown'}. Search still uses the previous version"
    )
    message = f"re-embedded {job.done} of {job.total} documents; the new version was discarded"
    if not repo.finish_job(job.id, JobStatus.FAILED, message=message, error=error):
        return None
    on_job_finished(repo.session, job.id, JobStatus.FAILED)
    return JobStatus.FAILED


def requeue_ingest(session: Session, job: Job) -> int:
    """Re-enqueue what a stalled ingest or reembed job has left; return how many tasks (the reaper's hook).

    An upload whose stream stopped feeding the job (the API flushes at least every EMBEDQ_INGEST_FLUSH_S
    while it streams) is closed with an error, keeping what arrived.
    """
    from app.core.config import get_settings

    repo = CollectionRepository(session)
    task = TaskName.INGEST_REEMBED if job.kind == JobKind.REEMBED.value else TaskName.INGEST_BATCH
    seqs = repo.pending_batches(job.id)
    for seq in seqs:
        enqueue(session, task, str(job.id), seq)
    if seqs:
        return len(seqs)
    if job.message == INDEXING:
        enqueue(session, TaskName.INGEST_INDEX, str(job.id), int(job.params["version_id"]))
        return 1
    if not job.input_complete:
        repo.close_input(job.id, "the upload stopped arriving before it ended (client or API gone)")
    session.refresh(job)
    settle(session, job.id, get_settings())
    return 0


def cancel_jobs(session: Session, jobs: Sequence[Job], reason: str) -> None:
    """Cancel active jobs (their queued batches are skipped), each announced once."""
    repo = CollectionRepository(session)
    for job in jobs:
        if repo.cancel_job(job.id, reason):
            on_job_finished(session, job.id, JobStatus.CANCELLED)
