"""The worker side of ingestion: run one batch of an ingest or reembed job, build the index, requeue.

Called by the thin tasks in ``workers/tasks/ingest.py``, which pass a ``LoadModel`` (the torch runtime lives
in the worker). Both kinds of batch share one skeleton, ``_run_batch``: two short transactions around the
model, so no lock is held while it computes. The first reads what is pending; the second locks the job,
claims the batch (pending -> done, so a redelivered task changes nothing, counts included), writes with
COPY and ``ON CONFLICT DO NOTHING``, counts, and settles the job when this batch completed it. A ``_Stage``
says what differs: what a batch reads, what the model computes from it, and how the result is stored.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
from sqlalchemy.orm import Session

from app.catalog.resolver import InvalidModelNameError, UnknownModelError
from app.collections.contracts import ChunkPiece, IngestModel, LoadModel, Vectors
from app.collections.copy_format import ChunkRow
from app.collections.repository import CollectionRepository, PendingDocument
from app.collections.settling import INDEXING, record_errors, report_progress, settle
from app.collections.vector_store import VectorStore
from app.core.config import Settings
from app.core.db import Scope, enqueue
from app.core.queues import TaskName
from app.core.store_outages import raise_if_unavailable
from app.jobs.fairness import batch_priorities
from app.jobs.lifecycle import NOTHING_DONE, BatchOutcome
from app.jobs.repository import JobRepository
from app.models.collection import IndexStatus
from app.models.job import Job, JobKind, JobStatus
from app.observability.tracing import annotate

log = logging.getLogger(__name__)

# What a model may raise that fails the batch's documents rather than retrying the task.
MODEL_ERRORS = (UnknownModelError, InvalidModelNameError, OSError, RuntimeError, ValueError, TypeError)

Todo = TypeVar("Todo")
Result = TypeVar("Result")


@dataclass(frozen=True)
class _Work:
    tenant: str
    model: str
    collection_id: int
    version_id: int
    max_tokens: int
    overlap_tokens: int
    document_ids: list[int]
    hashes: dict[int, str]


@dataclass(frozen=True)
class _Stored:
    """What a batch's write did: documents written and failed, chunks counted and written, tokens embedded."""

    documents: int
    failed: int
    chunks_total: int
    chunks_done: int
    tokens: int = 0


@dataclass(frozen=True)
class _Stage(Generic[Todo, Result]):
    """One kind of batch: ``read`` what is pending (first transaction), ``compute`` it into a fresh ``Result``
    (filled in place, so what was done before a model error still counts), ``store`` it (second transaction;
    the error is set when the model or the vector table refused the batch)."""

    kind: str
    read: Callable[[Session, _Work], list[Todo]]
    result: Callable[[], Result]
    compute: Callable[[IngestModel, _Work, list[Todo], Result], None]
    store: Callable[[Session, uuid.UUID, _Work, list[Todo], Result, str | None, Settings], _Stored]


def _read_work(session: Session, job_id: uuid.UUID, seq: int) -> _Work | None:
    job = JobRepository(session).get(job_id)
    if job is None or job.status != JobStatus.RUNNING.value:
        return None
    repo = CollectionRepository(session)
    batch = repo.batch(job_id, seq)
    if batch is None or batch.state != "pending":
        return None
    version = repo.version(int(job.params["version_id"]))
    collection = repo.get_by_id(int(job.params["collection_id"]))
    if version is None or collection is None:
        return None
    return _Work(
        tenant=job.tenant,
        model=version.model,
        collection_id=collection.id,
        version_id=version.id,
        max_tokens=collection.max_tokens,
        overlap_tokens=collection.overlap_tokens,
        document_ids=list(batch.document_ids),
        hashes=dict(zip(batch.document_ids, batch.content_hashes, strict=True)),
    )


def _run_batch(
    stage: _Stage[Todo, Result], scope: Scope, job_id: uuid.UUID, seq: int, load: LoadModel, settings: Settings
) -> BatchOutcome:
    """Return what batch ``seq`` of the job did, run as ``stage`` says; a redelivered batch changes nothing."""
    with scope() as session:
        work = _read_work(session, job_id, seq)
        if work is None:
            return NOTHING_DONE
        todo = stage.read(session, work)
    result = stage.result()
    dimension, error = 0, None
    if todo:
        try:
            model = load(work.model)
            dimension = model.dimension
            stage.compute(model, work, todo, result)
        except MODEL_ERRORS as exc:
            raise_if_unavailable(exc, f"{stage.kind} job {job_id}: model {work.model}")  # waited out, not failed
            log.exception("%s job %s batch %d failed", stage.kind, job_id, seq)
            error = f"embedding failed ({type(exc).__name__}: {exc})"
    with scope() as session:
        job = JobRepository(session).lock(job_id)
        if job is None or job.status != JobStatus.RUNNING.value:
            return NOTHING_DONE
        if not CollectionRepository(session).claim_batch(job_id, seq):
            return NOTHING_DONE
        if error is None and todo:
            error = _ensure_vector_table(session, work.version_id, work.model, dimension)
        stored = stage.store(session, job_id, work, todo, result, error, settings)
        counts = JobRepository(session).add_counts(
            job_id,
            done=len(work.document_ids) - stored.failed,
            failed=stored.failed,
            chunks_total=stored.chunks_total,
            chunks_done=stored.chunks_done,
            tokens=stored.tokens,
        )
        report_progress(session, job_id, counts)
        status = settle(session, job_id, settings)
    annotate(
        job_id=str(job_id), kind=stage.kind, model=work.model, batch_size=len(work.document_ids),
        chunks=stored.chunks_done, tokens=stored.tokens, tenant=work.tenant,
    )  # fmt: skip
    return BatchOutcome(stored.documents, stored.failed, stored.chunks_done, status)


# Ingest: chunk and embed documents.


@dataclass
class _Chunked:
    pieces: list[list[ChunkPiece]] = field(default_factory=list)
    vectors: Vectors = field(default_factory=lambda: Vectors(np.empty((0, 0), dtype=np.float32)))


def _read_pending(session: Session, work: _Work) -> list[PendingDocument]:
    pending = CollectionRepository(session).pending_documents(work.document_ids)
    return [d for d in pending if work.hashes.get(d.id) == d.content_hash]


def _chunk_and_embed(model: IngestModel, work: _Work, pending: list[PendingDocument], out: _Chunked) -> None:
    out.pieces = model.chunk([d.text for d in pending], work.max_tokens, work.overlap_tokens)
    out.vectors = model.embed([p.text for doc_pieces in out.pieces for p in doc_pieces])


def _store_documents(
    session: Session,
    job_id: uuid.UUID,
    work: _Work,
    pending: list[PendingDocument],
    chunked: _Chunked,
    error: str | None,
    settings: Settings,
) -> _Stored:
    # Only documents still pending at the content we read are ours to write or fail: one re-uploaded
    # meanwhile belongs to the newer batch.
    ours = CollectionRepository(session).lock_pending({d.id: d.content_hash for d in pending})
    if error is None:
        written, failures = _store_chunks(session, work, pending, chunked, ours)
    else:
        written, failures = {}, dict.fromkeys(ours, error)
    _record_failures(session, job_id, work.collection_id, failures, settings)
    chunks_written = sum(written.values())
    chunks_failed = sum(len(p) for d, p in zip(pending, chunked.pieces, strict=False) if d.id in failures)
    tokens = sum(p.token_count for d, ps in zip(pending, chunked.pieces, strict=False) if d.id in written for p in ps)
    return _Stored(len(written), len(failures), chunks_written + chunks_failed, chunks_written, tokens)


def _store_chunks(
    session: Session, work: _Work, pending: Sequence[PendingDocument], chunked: _Chunked, ours: set[int]
) -> tuple[dict[int, int], dict[int, str]]:
    """Replace our documents' chunks with the new ones; return (chunks per document, failures)."""
    repo = CollectionRepository(session)
    store = VectorStore(session)
    rows: list[ChunkRow] = []
    keep: list[int] = []
    written: dict[int, int] = {}
    failures: dict[int, str] = {}
    offset = 0
    for doc, doc_pieces in zip(pending, chunked.pieces, strict=True):
        if doc.id in ours and not doc_pieces:
            failures[doc.id] = "the text has no tokens this model knows"
        elif doc.id in ours:
            rows += [ChunkRow(doc.id, i, p.text, p.token_count, p.start, p.end) for i, p in enumerate(doc_pieces)]
            keep += range(offset, offset + len(doc_pieces))
            written[doc.id] = len(doc_pieces)
        offset += len(doc_pieces)
    store.delete_chunks([v.id for v in repo.versions(work.collection_id)], sorted(written))
    store.write_chunks(work.version_id, rows, chunked.vectors.take(keep))
    repo.mark_ready(written)
    return written, failures


def _record_failures(
    session: Session, job_id: uuid.UUID, collection_id: int, failures: dict[int, str], settings: Settings
) -> None:
    """Mark the documents failed and drop their chunks: the chunks of a text a document no longer holds (its
    update failed) were found by search, old text beside new metadata, while export left the document out."""
    if not failures:
        return
    repo = CollectionRepository(session)
    VectorStore(session).delete_chunks([v.id for v in repo.versions(collection_id)], sorted(failures))
    for error in set(failures.values()):
        repo.mark_failed([i for i, e in failures.items() if e == error], error)
    names = repo.external_ids(list(failures))
    record_errors(session, job_id, [(names.get(i), None, e) for i, e in sorted(failures.items())], settings)


_INGEST: _Stage[PendingDocument, _Chunked] = _Stage(
    "ingest", _read_pending, _Chunked, _chunk_and_embed, _store_documents
)


def run_ingest_batch(scope: Scope, job_id: uuid.UUID, seq: int, load: LoadModel, settings: Settings) -> BatchOutcome:
    """Return what chunking and embedding batch ``seq`` of an ingest job did; redelivery changes nothing."""
    return _run_batch(_INGEST, scope, job_id, seq, load, settings)


# Reembed: embed the chunks already stored with the new version's model.


@dataclass
class _Embedded:
    vectors: Vectors = field(default_factory=lambda: Vectors(np.empty((0, 0), dtype=np.float32)))


def _read_chunks(session: Session, work: _Work) -> list[tuple[int, str]]:
    return VectorStore(session).chunks_of(work.document_ids)


def _embed_chunks(model: IngestModel, work: _Work, chunks: list[tuple[int, str]], out: _Embedded) -> None:
    out.vectors = model.embed([t for _, t in chunks])


def _store_vectors(
    session: Session,
    job_id: uuid.UUID,
    work: _Work,
    chunks: list[tuple[int, str]],
    embedded: _Embedded,
    error: str | None,
    settings: Settings,
) -> _Stored:
    if error is None:
        VectorStore(session).write_vectors(work.version_id, [c for c, _ in chunks], embedded.vectors)
        return _Stored(len(work.document_ids), 0, len(chunks), len(chunks), embedded.vectors.tokens or 0)
    names = CollectionRepository(session).external_ids(work.document_ids)
    record_errors(session, job_id, [(names.get(i), None, error) for i in work.document_ids], settings)
    return _Stored(0, len(work.document_ids), len(chunks), 0)


_REEMBED: _Stage[tuple[int, str], _Embedded] = _Stage("reembed", _read_chunks, _Embedded, _embed_chunks, _store_vectors)


def run_reembed_batch(scope: Scope, job_id: uuid.UUID, seq: int, load: LoadModel, settings: Settings) -> BatchOutcome:
    """Return what embedding batch ``seq``'s chunks with the new version's model did; redelivery changes nothing."""
    return _run_batch(_REEMBED, scope, job_id, seq, load, settings)


# After the batches.


def _ensure_vector_table(session: Session, version_id: int, model: str, dimension: int) -> str | None:
    """Create the version's vector table on first use; return an error if the model's dimension differs."""
    repo = CollectionRepository(session)
    version = repo.version(version_id, lock=True)
    assert version is not None
    if version.dimension is None:
        repo.set_dimension(version_id, dimension)
        VectorStore(session).create_vector_table(version_id, dimension, version.storage, fresh=True)
    elif version.dimension != dimension:
        return (
            f"model {model} now gives {dimension}-dimensional vectors but this collection version holds "
            f"{version.dimension}-dimensional ones: restore the model, or reembed the collection"
        )
    return None


def build_index(scope: Scope, job_id: uuid.UUID, version_id: int, settings: Settings) -> JobStatus | None:
    """Build a version's HNSW index (if missing), then settle the job that waited for it."""
    with scope() as session:
        job = JobRepository(session).get(job_id)
        if job is None or job.status != JobStatus.RUNNING.value:
            return None
        # The version's row before its table, as batches lock them (``_ensure_vector_table``, then their
        # writes): the index build's SHARE lock on the table, taken first, would deadlock with a batch.
        version = CollectionRepository(session).version(version_id, lock=True)
        if version is None:
            return None
        store = VectorStore(session)
        if store.vector_table_exists(version_id):
            store.build_index(
                version_id, version.storage, m=settings.hnsw_m, ef_construction=settings.hnsw_ef_construction,
                memory=settings.hnsw_build_memory, workers=settings.hnsw_build_workers,
            )  # fmt: skip
        CollectionRepository(session).set_index_status(version_id, IndexStatus.READY)
    with scope() as session:
        if JobRepository(session).lock(job_id) is None:
            return None
        return settle(session, job_id, settings)


def requeue_ingest(session: Session, job: Job) -> int:
    """Re-enqueue what a stalled ingest or reembed job has left; return how many tasks (the reaper's hook).

    An upload whose stream stopped feeding the job (the API flushes at least every EMBEDQ_INGEST_FLUSH_S
    while it streams) is closed with an error, keeping what arrived.
    """
    from app.core.config import get_settings

    task = TaskName.INGEST_REEMBED if job.kind == JobKind.REEMBED.value else TaskName.INGEST_BATCH
    seqs = CollectionRepository(session).pending_batches(job.id)
    priorities = batch_priorities(session, job.tenant, get_settings(), len(seqs), counted=True)
    for seq, priority in zip(seqs, priorities, strict=True):
        enqueue(session, task, str(job.id), seq, priority=priority)
    if seqs:
        return len(seqs)
    if job.message == INDEXING:
        enqueue(session, TaskName.INGEST_INDEX, str(job.id), int(job.params["version_id"]))
        return 1
    if not job.input_complete:
        JobRepository(session).close_input(job.id, "the upload stopped arriving before it ended (client or API gone)")
    session.refresh(job)
    settle(session, job.id, get_settings())
    return 0
