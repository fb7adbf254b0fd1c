"""Collections on the API side: create, read, delete, stream uploads in, reembed, search, export.

Uploads are the one place where a request commits more than once: a multi-GB upload cannot be one
transaction, and workers should start on the first documents while the rest still streams in. So
``UploadWriter`` commits each batch of documents (and sends its task) as soon as it is complete.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.catalog.access import JOB_API_ERRORS, check_model
from app.catalog.dimension import model_dimension
from app.catalog.resolver import resolve_model
from app.collections.ingestion import Scope, cancel_jobs, report_progress, settle
from app.collections.repository import CollectionRepository, DocumentInput, sparse_weights
from app.collections.schemas import (
    ChunkingSpec,
    CollectionCounts,
    CollectionCreate,
    CollectionLinks,
    CollectionList,
    CollectionOut,
    HybridWeights,
    IngestErrorList,
    IngestErrorOut,
    JobNotifications,
    ReembedRequest,
    SearchHit,
    SearchRequest,
    SearchResponse,
    VersionOut,
)
from app.collections.uploads import Item, ParsedDocument, RejectedLine
from app.core.config import Settings
from app.core.db import enqueue, session_scope
from app.core.errors import ConflictError, InvalidRequestError, NotFoundError
from app.core.queues import TaskName
from app.core.security import Principal
from app.hybrid.service import check_hybrid_model
from app.jobs.repository import JobRepository
from app.keys.service import admit_job
from app.models.collection import Collection, CollectionVersion, IndexStatus, VersionStatus
from app.models.job import Job, JobKind, JobStatus

_BUSY_KINDS = (JobKind.INGEST.value, JobKind.REEMBED.value)


def content_hash(text: str) -> str:
    """Return the hex SHA-256 of a document's text: unchanged text, nothing to embed."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Collections.


def create_collection(
    session: Session, payload: CollectionCreate, settings: Settings, principal: Principal
) -> CollectionOut:
    """Create a collection of the caller's tenant and its first (active, empty) vector version; 409 if the
    tenant has one by that name already."""
    repo = CollectionRepository(session)
    if repo.get_in_tenant(principal.tenant, payload.name) is not None:
        raise ConflictError(f"a collection named {payload.name!r} exists: pick another name or delete it first")
    model = payload.model or settings.default_model
    check_model(model, settings, principal, JOB_API_ERRORS, session)
    chunking = payload.chunking or ChunkingSpec(
        max_tokens=settings.ingest_default_max_tokens, overlap_tokens=settings.ingest_default_overlap_tokens
    )
    collection = Collection(
        tenant=principal.tenant,
        name=payload.name,
        max_tokens=chunking.max_tokens,
        overlap_tokens=chunking.overlap_tokens,
        meta=payload.metadata,
    )
    repo.add(collection)
    dimension = model_dimension(model, settings)
    version = CollectionVersion(
        collection_id=collection.id,
        number=1,
        model=model,
        dimension=dimension,
        status=VersionStatus.ACTIVE.value,
        index_status=IndexStatus.NONE.value,
        activated_at=datetime.now(UTC),
    )
    repo.add_version(version)
    if dimension is not None:
        repo.create_vector_table(version.id, dimension, fresh=True)
    return _view(collection, [version], None, None)


def list_collections(session: Session, principal: Principal, *, limit: int, offset: int) -> CollectionList:
    repo = CollectionRepository(session)
    page = repo.list_page(principal, limit=limit + 1, offset=offset)
    versions = repo.active_versions([c.id for c in page[:limit]])
    data = [_view(c, [versions[c.id]], None, None) for c in page[:limit] if c.id in versions]
    return CollectionList(data=data, next_offset=offset + limit if len(page) > limit else None)


def get_collection(session: Session, name: str, principal: Principal) -> CollectionOut:
    """Return a collection with its counts, versions and the size of its active vectors."""
    repo = CollectionRepository(session)
    collection = _require(repo, name, principal)
    versions = repo.versions(collection.id)
    stats = repo.stats(collection.id, repo.active_version(collection.id))
    counts = CollectionCounts(
        documents=stats.documents,
        pending=stats.pending,
        ready=stats.ready,
        failed=stats.failed,
        chunks=stats.chunks,
        vectors=stats.vectors,
    )
    return _view(collection, versions, counts, stats.vector_bytes)


def delete_collection(session: Session, name: str, principal: Principal) -> None:
    """Delete a collection, its documents and every vector version; its running jobs are cancelled."""
    repo = CollectionRepository(session)
    collection = _require(repo, name, principal, lock=True)
    cancel_jobs(session, repo.active_jobs(collection.id, _BUSY_KINDS), f"collection {name!r} was deleted")
    for version in repo.versions(collection.id):
        repo.drop_vector_table(version.id)
    repo.delete(collection)


def _require(repo: CollectionRepository, name: str, principal: Principal, *, lock: bool = False) -> Collection:
    """Return the caller's collection ``name``; another tenant's is a 404, as if it did not exist.

    An admin gets their own tenant's first, else the only one by that name, and a 409 if several tenants
    have one (an admin acts on another tenant's collection only when the name says which).
    """
    found = repo.named(name, principal, lock=lock)
    if not found:
        raise NotFoundError(f"no collection named {name!r}: create it with POST /collections", param="name")
    if len(found) > 1 and found[0].tenant != principal.tenant:
        tenants = ", ".join(sorted(c.tenant for c in found))
        raise ConflictError(
            f"tenants {tenants} each have a collection named {name!r}: use a key of the tenant you mean",
            param="name",
        )
    return found[0]


def _view(
    collection: Collection, versions: list[CollectionVersion], counts: CollectionCounts | None, size: int | None
) -> CollectionOut:
    active = next(v for v in versions if v.status == VersionStatus.ACTIVE.value)
    base = f"/collections/{collection.name}"
    return CollectionOut(
        name=collection.name,
        model=active.model,
        dimension=active.dimension,
        chunking=ChunkingSpec(max_tokens=collection.max_tokens, overlap_tokens=collection.overlap_tokens),
        metadata=collection.meta,
        counts=counts,
        size_bytes=size,
        versions=[
            VersionOut(
                number=v.number,
                model=v.model,
                dimension=v.dimension,
                status=v.status,
                index_status=v.index_status,
                created_at=v.created_at,
                activated_at=v.activated_at,
            )
            for v in versions
        ],
        created_at=collection.created_at,
        links=CollectionLinks(
            self=base,
            documents=f"{base}/documents",
            search=f"{base}/search",
            export=f"{base}/export",
            reembed=f"{base}/reembed",
        ),
    )


# Uploads.


class UploadWriter:
    """Writes a streamed upload to Postgres batch by batch; each batch is committed, then sent to the bulk queue.

    The job is created with the first batch (an upload that holds nothing is a 422, not a job), stays
    open (``input_complete`` false) while the body streams, and is settled by ``finish``.
    """

    def __init__(
        self,
        session: Session,
        name: str,
        settings: Settings,
        source: dict[str, Any],
        principal: Principal,
        notifications: JobNotifications | None = None,
    ) -> None:
        self.session = session
        self.notifications = notifications or JobNotifications()
        self.principal = principal
        self.repo = CollectionRepository(session)
        self.name = name
        self.settings = settings
        self.source = source
        self.documents: dict[str, ParsedDocument] = {}
        self.rejected: list[RejectedLine] = []
        self.chars = 0
        self.job_id: uuid.UUID | None = None
        self._collection_id = 0
        self.seq = 0
        self.flushed_at = time.monotonic()

    @property
    def started(self) -> bool:
        return self.job_id is not None

    def open(self) -> None:
        """Refuse early: an unknown collection (404), or one being re-embedded (409)."""
        collection = _require(self.repo, self.name, self.principal)
        self._refuse_if_reembedding(collection)
        self.session.commit()  # end the read transaction: nothing is held while the body streams

    def add(self, item: Item) -> bool:
        """Buffer one parsed item; return True when the batch is full (documents or characters)."""
        if isinstance(item, RejectedLine):
            self.rejected.append(item)
        else:
            earlier = self.documents.pop(item.external_id, None)
            if earlier is not None:
                self.rejected.append(
                    RejectedLine(
                        earlier.line,
                        earlier.external_id,
                        f"document id {earlier.external_id!r} appears again at line {item.line} of the upload; "
                        "the later one was kept",
                    )
                )
            self.documents[item.external_id] = item
            self.chars += len(item.text)
        full = len(self.documents) + len(self.rejected) >= self.settings.ingest_batch_documents
        return full or self.chars >= self.settings.ingest_batch_chars

    def stale(self) -> bool:
        """Return True when the last flush is EMBEDQ_INGEST_FLUSH_S old: a slow upload still feeds its job."""
        return time.monotonic() - self.flushed_at >= self.settings.ingest_flush_s

    def flush(self) -> None:
        """Commit the buffered documents as one batch and send its task; with nothing buffered, a heartbeat."""
        self.flushed_at = time.monotonic()
        if not self.documents and not self.rejected:
            if self.job_id is not None:
                self._lock_open_job()
                self.repo.add_job_counts(self.job_id)
                self.session.commit()
            return
        job_id = self._lock_open_job() if self.job_id is not None else self._create_job()
        inputs = [
            DocumentInput(d.external_id, d.text, d.metadata, content_hash(d.text)) for d in self.documents.values()
        ]
        pending = self.repo.upsert_documents(self._collection_id, inputs) if inputs else []
        if pending:
            self.repo.add_batch(job_id, self.seq, [d.id for d in pending], [d.content_hash for d in pending])
            enqueue(self.session, TaskName.INGEST_BATCH, str(job_id), self.seq)
            self.seq += 1
        errors = [(r.document_id, r.line, r.error) for r in self.rejected]
        self.repo.add_errors(job_id, errors, self.settings.ingest_errors_in_view)
        unchanged = len(inputs) - len(pending)
        self.repo.add_job_counts(
            job_id, total=len(inputs) + len(errors), done=unchanged, skipped=unchanged, failed=len(errors)
        )
        self.session.commit()
        self.documents.clear()
        self.rejected.clear()
        self.chars = 0

    def finish(self) -> Job:
        """Write what is left, mark the upload complete and settle the job; 422 if there were no documents."""
        self.flush()
        if self.job_id is None:
            raise InvalidRequestError(
                "the upload holds no documents: send JSONL lines, CSV rows or text with at least one document"
            )
        return self._close(None)

    def fail(self, reason: str) -> Job | None:
        """End an upload that broke midway: keep what arrived, record why the rest did not.

        Returns None if nothing was committed yet (the caller answers with an error instead of a job).
        """
        self.session.rollback()
        if self.job_id is None:
            return None
        self.flush()
        self._lock_open_job()
        self.repo.add_errors(self.job_id, [(None, None, reason)], self.settings.ingest_errors_in_view)
        return self._close(reason)

    def _close(self, reason: str | None) -> Job:
        assert self.job_id is not None
        self._lock_open_job()
        # Milestones count once the total is known: the batches done while the body streamed may have passed some.
        report_progress(self.session, self.job_id, self.repo.close_input(self.job_id, reason))
        settle(self.session, self.job_id, self.settings)
        self.session.commit()
        job = self.session.get(Job, self.job_id)
        assert job is not None
        self.session.refresh(job)
        return job

    def _create_job(self) -> uuid.UUID:
        collection = _require(self.repo, self.name, self.principal, lock=True)
        self._refuse_if_reembedding(collection)
        admit_job(self.session, self.principal)
        version = self.repo.active_version(collection.id)
        job = Job(
            id=uuid.uuid4(),
            tenant=collection.tenant,
            api_key_id=self.principal.key_id,
            kind=JobKind.INGEST.value,
            status=JobStatus.RUNNING.value,
            model=version.model,
            params={
                "collection": self.name,
                "collection_id": collection.id,
                "version_id": version.id,
                **self.source,
                **self.notifications.params(),
            },
            webhook_url=str(self.notifications.webhook_url) if self.notifications.webhook_url else None,
            total=0,
            input_complete=False,
            started_at=datetime.now(UTC),
        )
        self.session.add(job)
        self.session.flush()
        self.job_id = job.id
        self._collection_id = collection.id
        return job.id

    def _lock_open_job(self) -> uuid.UUID:
        # The job's row first, then documents: the order workers lock in too, so the two never deadlock.
        assert self.job_id is not None
        job = self.repo.lock_job(self.job_id)
        if job is None or job.status != JobStatus.RUNNING.value or job.input_complete:
            state = job.status if job is not None else "deleted"
            raise ConflictError(f"ingest job {self.job_id} is no longer taking documents ({state}): upload again")
        return self.job_id

    def _refuse_if_reembedding(self, collection: Collection) -> None:
        busy = self.repo.active_jobs(collection.id, [JobKind.REEMBED.value])
        if busy:
            raise ConflictError(
                f"collection {collection.name!r} is being re-embedded by job {busy[0].id}: upload when it has "
                "finished, or cancel it"
            )


# Reembed.


def start_reembed(
    session: Session, name: str, payload: ReembedRequest, settings: Settings, principal: Principal
) -> Job:
    """Queue a job that embeds every chunk with ``payload.model`` into a new version, switched to when done."""
    repo = CollectionRepository(session)
    collection = _require(repo, name, principal, lock=True)
    model = payload.model
    check_model(model, settings, principal, JOB_API_ERRORS, session)
    busy = repo.active_jobs(collection.id, _BUSY_KINDS)
    if busy:
        raise ConflictError(
            f"collection {name!r} has a running {busy[0].kind} job {busy[0].id}: reembed when it has finished"
        )
    admit_job(session, principal)
    for old in repo.versions(collection.id):
        if old.status in (VersionStatus.BUILDING.value, VersionStatus.FAILED.value):
            repo.set_version_status(old.id, VersionStatus.FAILED)
            repo.drop_vector_table(old.id)
    dimension = model_dimension(model, settings)
    version = CollectionVersion(
        collection_id=collection.id,
        number=repo.next_version_number(collection.id),
        model=model,
        dimension=dimension,
        status=VersionStatus.BUILDING.value,
        index_status=IndexStatus.NONE.value,
    )
    repo.add_version(version)
    if dimension is not None:
        repo.create_vector_table(version.id, dimension, fresh=True)
    job = Job(
        id=uuid.uuid4(),
        tenant=collection.tenant,
        api_key_id=principal.key_id,
        kind=JobKind.REEMBED.value,
        status=JobStatus.RUNNING.value,
        model=model,
        params={"collection": name, "collection_id": collection.id, "version_id": version.id, **payload.params()},
        webhook_url=str(payload.webhook_url) if payload.webhook_url else None,
        total=0,
        input_complete=True,
        started_at=datetime.now(UTC),
    )
    session.add(job)
    session.flush()
    version.job_id = job.id
    batches, documents = repo.add_reembed_batches(job.id, collection.id, settings.ingest_batch_documents)
    repo.add_job_counts(job.id, total=documents)
    for seq in range(batches):
        enqueue(session, TaskName.INGEST_REEMBED, str(job.id), seq)
    if documents == 0:
        settle(session, job.id, settings)
    session.refresh(job)
    return job


# Search.


async def search(
    session: Session, name: str, payload: SearchRequest, settings: Settings, principal: Principal
) -> SearchResponse:
    """Return the chunks nearest the query, best first; refuses another model or a wrong-size vector."""
    from starlette.concurrency import run_in_threadpool

    collection, version = await run_in_threadpool(_search_target, session, name, principal)
    if payload.model is not None and not _same_model(payload.model, version.model, settings):
        raise InvalidRequestError(
            f"collection {name!r} holds {_dims(version.dimension)} vectors of {version.model}; the request names "
            f"{payload.model} ({_dimension_of(payload.model, settings)}): search with {version.model}, or reembed "
            f"the collection with {payload.model} first",
            param="model",
        )
    vector = np.asarray(payload.vector, dtype=np.float32) if payload.vector is not None else None
    sparse: SparseQuery | None = None
    if payload.mode != "dense":
        check_hybrid_model(version.model, settings, principal)
        vector, sparse = await _embed_hybrid_query(version.model, payload.query or "")
    if vector is None:
        vector = await _embed_query(version.model, payload.query or "")
    if version.dimension is not None and vector.shape[0] != version.dimension:
        raise InvalidRequestError(
            f"the query vector has {vector.shape[0]} dimensions but collection {name!r} holds "
            f"{version.dimension}-dimensional vectors of {version.model}: embed the query with {version.model}",
            param="vector",
        )
    if not np.all(np.isfinite(vector)) or not np.any(vector):
        raise InvalidRequestError("the query vector must be finite and not all zeros", param="vector")
    top_k = min(payload.top_k, settings.search_max_top_k)
    rows = await run_in_threadpool(_nearest, session, version, vector, sparse, payload, top_k, settings)
    return SearchResponse(
        collection=collection.name,
        model=version.model,
        dimension=int(version.dimension or vector.shape[0]),
        data=[
            SearchHit(
                document_id=r.document_id, chunk_index=r.chunk_index, text=r.text, metadata=r.metadata, score=r.score
            )
            for r in rows
        ],
    )


def _search_target(session: Session, name: str, principal: Principal) -> tuple[Collection, CollectionVersion]:
    repo = CollectionRepository(session)
    collection = _require(repo, name, principal)
    return collection, repo.active_version(collection.id)


@dataclass(frozen=True)
class SparseQuery:
    weights: dict[int, float]
    dimension: int


def _nearest(
    session: Session,
    version: CollectionVersion,
    vector: np.ndarray,
    sparse: SparseQuery | None,
    payload: SearchRequest,
    top_k: int,
    settings: Settings,
) -> list[Any]:
    """Search the version: by dense cosine, or (``sparse`` given) by the sparse/hybrid score of ``payload.mode``."""
    repo = CollectionRepository(session)
    if version.dimension is None or not repo.vector_table_exists(version.id):
        return []
    common = {"top_k": top_k, "metadata_filter": payload.filter, "ef_search": settings.search_ef_search}
    if sparse is None:
        return repo.search(version, vector, **common)
    dense_weight, sparse_weight = (0.0, 1.0) if payload.mode == "sparse" else _hybrid_weights(payload)
    return repo.search_hybrid(
        version, vector, sparse.weights, sparse.dimension, dense_weight=dense_weight, sparse_weight=sparse_weight,
        **common,
    )  # fmt: skip


def _hybrid_weights(payload: SearchRequest) -> tuple[float, float]:
    weights = payload.weights or HybridWeights()
    return weights.dense, weights.sparse


async def _embed_hybrid_query(model: str, query: str) -> tuple[np.ndarray, SparseQuery]:
    from app.inference.dispatch import infer

    result = await infer("hybrid", model, {"texts": [query], "return_colbert": False})
    item = result["data"][0]
    sparse = SparseQuery({int(k): float(v) for k, v in item["sparse"].items()}, int(result["sparse_dimension"]))
    return np.asarray(item["dense"], dtype=np.float32), sparse


async def _embed_query(model: str, query: str) -> np.ndarray:
    from app.inference.dispatch import infer

    result = await infer("embed", model, {"texts": [query], "is_query": True})
    return np.frombuffer(base64.b64decode(result["embeddings"]), dtype="<f4").astype(np.float32)


def _same_model(asked: str, held: str, settings: Settings) -> bool:
    if asked == held:
        return True
    try:
        return resolve_model(asked, settings) == resolve_model(held, settings)
    except (LookupError, ValueError):
        return False


def _dimension_of(model: str, settings: Settings) -> str:
    try:
        return _dims(model_dimension(model, settings))
    except (LookupError, ValueError):
        return "not a model this server knows"


def _dims(dimension: int | None) -> str:
    return f"{dimension}-dimensional" if dimension is not None else "dimension unknown until loaded"


# Errors and export.


def ingest_errors(
    session: Session, job_id: uuid.UUID, principal: Principal, *, after: int, limit: int
) -> IngestErrorList:
    job = JobRepository(session).get_visible(job_id, principal)
    if job is None or job.kind not in _BUSY_KINDS:
        raise NotFoundError(f"no ingest or reembed job with id {job_id}", param="job_id")
    rows = CollectionRepository(session).errors_page(job_id, after=after, limit=limit + 1)
    data = [IngestErrorOut(id=r.id, document_id=r.document_id, line=r.line, error=r.error) for r in rows[:limit]]
    return IngestErrorList(job_id=job_id, data=data, next_after=data[-1].id if len(rows) > limit else None)


def export_target(session: Session, name: str, principal: Principal) -> tuple[int, int, int | None]:
    """Return (collection id, active version id, dimension), or 404: checked before a stream starts."""
    repo = CollectionRepository(session)
    collection = _require(repo, name, principal)
    version = repo.active_version(collection.id)
    return collection.id, version.id, version.dimension


def export_jsonl(collection_id: int, version_id: int, scope: Scope = session_scope) -> Iterator[bytes]:
    """Yield the collection as JSONL: one line per chunk with its document id, text, metadata and vector."""
    with scope() as session:
        repo = CollectionRepository(session)
        if not repo.vector_table_exists(version_id):
            return
        lines: list[str] = []
        for external_id, idx, chunk_text, metadata, embedding, sparse in repo.export_rows(
            collection_id, version_id, vectors_as="text"
        ):
            fields = {"document_id": external_id, "chunk_index": idx, "text": chunk_text, "metadata": metadata}
            if sparse is not None:  # BGE-M3 collections: token id -> weight, as /vectorize-hybrid returns it
                fields["sparse"] = sparse_weights(sparse)
            head = json.dumps(fields, ensure_ascii=False)
            # pgvector's text form is already a JSON array.
            lines.append(f'{head[:-1]}, "embedding": {embedding or "null"}}}\n')
            if len(lines) >= 500:
                yield "".join(lines).encode("utf-8")
                lines.clear()
        if lines:
            yield "".join(lines).encode("utf-8")


class _Drain(io.RawIOBase):
    """A write-only file whose bytes are taken out as they come, so a Parquet file streams."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def export_parquet(
    collection_id: int,
    version_id: int,
    dimension: int | None,
    scope: Scope = session_scope,
    rows_per_group: int = 2048,
) -> Iterator[bytes]:
    """Yield the collection as one Parquet file, a row group at a time (vectors as fixed-size float lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    width = dimension or 0
    schema = pa.schema(
        [
            ("document_id", pa.string()),
            ("chunk_index", pa.int32()),
            ("text", pa.string()),
            ("metadata", pa.string()),
            ("embedding", pa.list_(pa.float32(), width) if width else pa.list_(pa.float32())),
        ]
    )
    sink = _Drain()
    with scope() as session, pq.ParquetWriter(sink, schema) as writer:
        repo = CollectionRepository(session)
        exists = repo.vector_table_exists(version_id)
        group: list[Any] = []
        for row in repo.export_rows(collection_id, version_id, vectors_as="array") if exists else ():
            group.append(row)
            if len(group) >= rows_per_group:
                writer.write_table(_parquet_table(pa, schema, group, width))
                group.clear()
                yield sink.take()
        if group:
            writer.write_table(_parquet_table(pa, schema, group, width))
    yield sink.take()


def _parquet_table(pa: Any, schema: Any, rows: list[Any], width: int) -> Any:
    vectors = np.asarray([r[4] if r[4] is not None else [np.nan] * width for r in rows], dtype=np.float32)
    embedding = (
        pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), width)
        if width
        else pa.array([list(r[4] or []) for r in rows], type=pa.list_(pa.float32()))
    )
    return pa.Table.from_arrays(
        [
            pa.array([r[0] for r in rows], pa.string()),
            pa.array([r[1] for r in rows], pa.int32()),
            pa.array([r[2] for r in rows], pa.string()),
            pa.array([json.dumps(r[3], ensure_ascii=False) for r in rows], pa.string()),
            embedding,
        ],
        schema=schema,
    )
