"""All SQL about collections: documents, chunks, vector versions and their tables, batches, search and export.

Where vectors live: one table per vector version, ``collection_vectors_<version id>`` with a typed
``vector(<dimension>)`` column and its own HNSW cosine index. We chose that over one shared table with a
partial expression index per version (``USING hnsw ((embedding::vector(384)) ...) WHERE version_id = N``):

- pgvector needs a typed column (or expression) for an index, and a version's model fixes its dimension,
  so the table can simply declare it: COPY and INSERT check the dimension for free;
- the HNSW graph is built once, after a version's bulk load (``build_index``); inserting into a live
  HNSW index is ~4x slower per vector than a bulk build here. A plain CREATE INDEX on a table only this
  version writes to blocks no other collection's writes, where on a shared table it would block them all
  (and CREATE INDEX CONCURRENTLY is slower still);
- dropping a collection or a replaced version is a DROP TABLE, not a DELETE of millions of rows and the
  vacuum after it;
- ``chunk_id`` has no foreign key to ``chunks``: the check would lock every referenced chunk row on each
  insert (measurably slower COPY); ``delete_chunks`` deletes vectors first, and reads join on chunks;
- search and export name the table from an integer id we issued, so no user text reaches the SQL.

Next to the dense vector, each row has a nullable ``sparse sparsevec`` column: a BGE-M3 model's sparse
token weights (vocabulary-sized, 0-based token ids), NULL for every other model. Sparse and hybrid
search score it exactly (inner product over the rows with weights): pgvector's HNSW would need a typed
dimension and at most 1,000 non-zero entries per row, and lexical weights are a re-scoring signal here.

The cost: DDL at run time, outside Alembic (``migrations/env.py`` ignores these tables).
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, literal, select, text, update
from sqlalchemy.orm import Session

from app.core.security import Principal, visible_to
from app.models.collection import (
    BatchState,
    Collection,
    CollectionVersion,
    Document,
    DocumentStatus,
    IndexStatus,
    IngestBatch,
    IngestError,
    VersionStatus,
)
from app.models.job import ACTIVE_STATUSES, Job, JobStatus

VECTOR_TABLE_PREFIX = "collection_vectors_"
# What an update of a job's counts returns (JobCounters' fields, in order).
_COUNTERS = (Job.total, Job.done, Job.failed, Job.input_complete, Job.progress)

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_COPY_TRAILER = struct.pack("!h", -1)
# document_id int8, idx int4, token_count int4, start_char int4, end_char int4 (text and vector follow).
_CHUNK_ROW = struct.Struct("!hiqiiiiiiii")


def vector_table(version_id: int) -> str:
    """Return the name of a version's vector table (ids are ours: integers, never user text)."""
    return f"{VECTOR_TABLE_PREFIX}{int(version_id)}"


@dataclass(frozen=True)
class DocumentInput:
    external_id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str


@dataclass(frozen=True)
class PendingDocument:
    id: int
    text: str
    content_hash: str


@dataclass(frozen=True)
class ChunkRow:
    document_id: int
    idx: int
    text: str
    token_count: int
    start_char: int
    end_char: int


@dataclass(frozen=True)
class Vectors:
    """One row per chunk: dense vectors, and for a BGE-M3 model each row's sparse {token id: weight}."""

    dense: np.ndarray
    sparse: Sequence[dict[int, float]] | None = None
    sparse_dimension: int | None = None

    def __len__(self) -> int:
        return len(self.dense)

    def take(self, rows: Sequence[int]) -> Vectors:
        """Return the given rows, in that order."""
        sparse = [self.sparse[i] for i in rows] if self.sparse is not None else None
        return Vectors(self.dense[list(rows)], sparse, self.sparse_dimension)


@dataclass(frozen=True)
class JobCounters:
    total: int
    done: int
    failed: int
    input_complete: bool
    progress: float


@dataclass(frozen=True)
class CollectionStats:
    documents: int
    pending: int
    ready: int
    failed: int
    chunks: int
    vectors: int
    vector_bytes: int


@dataclass(frozen=True)
class SearchRow:
    document_id: str
    chunk_index: int
    text: str
    metadata: dict[str, Any]
    score: float


class CollectionRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    # Collections and versions.

    def named(self, name: str, principal: Principal, *, lock: bool = False) -> list[Collection]:
        """Return the collections called ``name`` that ``principal`` may see, the caller's own tenant's first.

        Only an admin can get more than one (names are unique per tenant).
        """
        query = (
            select(Collection)
            .where(Collection.name == name, visible_to(principal, Collection.tenant))
            .order_by(Collection.tenant != principal.tenant, Collection.id)
        )
        return list(self.session.scalars(query.with_for_update() if lock else query))

    def get_in_tenant(self, tenant: str, name: str) -> Collection | None:
        return self.session.scalar(select(Collection).where(Collection.tenant == tenant, Collection.name == name))

    def get_by_id(self, collection_id: int) -> Collection | None:
        return self.session.get(Collection, collection_id)

    def list_page(self, principal: Principal, *, limit: int, offset: int) -> list[Collection]:
        return list(
            self.session.scalars(
                select(Collection)
                .where(visible_to(principal, Collection.tenant))
                .order_by(Collection.name, Collection.tenant)
                .limit(limit)
                .offset(offset)
            )
        )

    def add(self, collection: Collection) -> None:
        self.session.add(collection)
        self.session.flush()

    def add_version(self, version: CollectionVersion) -> None:
        self.session.add(version)
        self.session.flush()

    def version(self, version_id: int, *, lock: bool = False) -> CollectionVersion | None:
        query = select(CollectionVersion).where(CollectionVersion.id == version_id)
        return self.session.scalar(query.with_for_update() if lock else query)

    def versions(self, collection_id: int) -> list[CollectionVersion]:
        return list(
            self.session.scalars(
                select(CollectionVersion)
                .where(CollectionVersion.collection_id == collection_id)
                .order_by(CollectionVersion.number)
            )
        )

    def active_version(self, collection_id: int) -> CollectionVersion:
        return self.session.scalars(
            select(CollectionVersion).where(
                CollectionVersion.collection_id == collection_id,
                CollectionVersion.status == VersionStatus.ACTIVE.value,
            )
        ).one()

    def active_versions(self, collection_ids: Sequence[int]) -> dict[int, CollectionVersion]:
        rows = self.session.scalars(
            select(CollectionVersion).where(
                CollectionVersion.collection_id.in_(list(collection_ids)),
                CollectionVersion.status == VersionStatus.ACTIVE.value,
            )
        )
        return {v.collection_id: v for v in rows}

    def next_version_number(self, collection_id: int) -> int:
        highest = self.session.scalar(
            select(func.max(CollectionVersion.number)).where(CollectionVersion.collection_id == collection_id)
        )
        return int(highest or 0) + 1

    def set_version_status(self, version_id: int, status: VersionStatus) -> None:
        values: dict[str, Any] = {"status": status.value}
        if status is VersionStatus.ACTIVE:
            values["activated_at"] = func.now()
        self.session.execute(update(CollectionVersion).where(CollectionVersion.id == version_id).values(**values))

    def set_index_status(self, version_id: int, status: IndexStatus) -> None:
        self.session.execute(
            update(CollectionVersion).where(CollectionVersion.id == version_id).values(index_status=status.value)
        )

    def set_dimension(self, version_id: int, dimension: int) -> None:
        self.session.execute(
            update(CollectionVersion).where(CollectionVersion.id == version_id).values(dimension=dimension)
        )

    def delete(self, collection: Collection) -> None:
        self.session.delete(collection)
        self.session.flush()

    def stats(self, collection_id: int, version: CollectionVersion) -> CollectionStats:
        row = self.session.execute(
            text(
                "SELECT count(*) AS documents, "
                "count(*) FILTER (WHERE status = 'pending') AS pending, "
                "count(*) FILTER (WHERE status = 'ready') AS ready, "
                "count(*) FILTER (WHERE status = 'failed') AS failed, "
                "coalesce(sum(chunk_count) FILTER (WHERE status = 'ready'), 0) AS chunks "
                "FROM documents WHERE collection_id = :cid"
            ),
            {"cid": collection_id},
        ).one()
        vectors, size = 0, 0
        if self.vector_table_exists(version.id):
            table = vector_table(version.id)
            vectors = int(self.session.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
            size = int(self.session.scalar(text(f"SELECT pg_total_relation_size('{table}')")) or 0)
        return CollectionStats(
            documents=row.documents,
            pending=row.pending,
            ready=row.ready,
            failed=row.failed,
            chunks=int(row.chunks),
            vectors=vectors,
            vector_bytes=size,
        )

    # Jobs of a collection.

    def active_jobs(self, collection_id: int, kinds: Sequence[str]) -> list[Job]:
        return list(
            self.session.scalars(
                select(Job).where(
                    Job.kind.in_(list(kinds)),
                    Job.status.in_([s.value for s in ACTIVE_STATUSES]),
                    Job.params["collection_id"].as_integer() == collection_id,
                )
            )
        )

    def lock_job(self, job_id: uuid.UUID) -> Job | None:
        return self.session.scalar(select(Job).where(Job.id == job_id).with_for_update())

    def add_job_counts(
        self,
        job_id: uuid.UUID,
        *,
        total: int = 0,
        done: int = 0,
        failed: int = 0,
        skipped: int = 0,
        chunks_total: int = 0,
        chunks_done: int = 0,
    ) -> JobCounters:
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
                progress=100.0 * (Job.done + done + Job.failed + failed) / func.greatest(Job.total + total, 1),
                updated_at=func.now(),
            )
            .returning(*_COUNTERS)
        ).one()
        return JobCounters(*row)

    def close_input(self, job_id: uuid.UUID, upload_error: str | None) -> JobCounters:
        """Mark the job's upload complete (with why it broke off, if it did); return its counters."""
        values: dict[str, Any] = {"input_complete": True, "updated_at": func.now()}
        if upload_error is not None:
            values["params"] = Job.params.op("||")(func.jsonb_build_object("upload_error", upload_error))
        row = self.session.execute(update(Job).where(Job.id == job_id).values(**values).returning(*_COUNTERS)).one()
        return JobCounters(*row)

    def set_job_message(self, job_id: uuid.UUID, message: str) -> None:
        self.session.execute(update(Job).where(Job.id == job_id).values(message=message, updated_at=func.now()))

    def finish_job(self, job_id: uuid.UUID, status: JobStatus, *, message: str, error: str | None) -> bool:
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
            .values(status=status.value, message=message, error=error, finished_at=func.now(), progress=100.0)
        )
        return result.rowcount == 1

    def cancel_job(self, job_id: uuid.UUID, message: str) -> bool:
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_([s.value for s in ACTIVE_STATUSES]))
            .values(status=JobStatus.CANCELLED.value, message=message, finished_at=func.now())
        )
        return result.rowcount == 1

    # Per-document errors.

    def add_errors(self, job_id: uuid.UUID, errors: Sequence[tuple[str | None, int | None, str]], keep: int) -> None:
        """Record errors in the job's error file, and the first ``keep`` of the job in its row for its view."""
        if not errors:
            return
        self.session.execute(
            IngestError.__table__.insert(),
            [{"job_id": job_id, "document_id": d, "line": line, "error": e} for d, line, e in errors],
        )
        sample = [{"document_id": d, "line": line, "error": e} for d, line, e in errors[:keep]]
        if sample:
            self.session.execute(
                update(Job)
                .where(Job.id == job_id, func.jsonb_array_length(Job.item_errors) < keep)
                .values(item_errors=Job.item_errors.op("||")(literal(sample, Job.item_errors.type)))
            )

    def errors_page(self, job_id: uuid.UUID, *, after: int, limit: int) -> list[IngestError]:
        return list(
            self.session.scalars(
                select(IngestError)
                .where(IngestError.job_id == job_id, IngestError.id > after)
                .order_by(IngestError.id)
                .limit(limit)
            )
        )

    def first_error(self, job_id: uuid.UUID) -> str | None:
        return self.session.scalar(
            select(IngestError.error).where(IngestError.job_id == job_id).order_by(IngestError.id).limit(1)
        )

    # Documents.

    def upsert_documents(self, collection_id: int, docs: Sequence[DocumentInput]) -> list[PendingDocument]:
        """Store documents; return those that need embedding (new, changed, or failed before).

        A document whose content hash is unchanged and already embedded only gets its metadata updated.
        """
        rows = self.session.execute(
            text(
                "INSERT INTO documents AS d (collection_id, external_id, text, metadata, content_hash, status, "
                "chunk_count) "
                "SELECT :cid, t.external_id, t.text, t.metadata, t.content_hash, 'pending', 0 "
                "FROM unnest(CAST(:ids AS text[]), CAST(:texts AS text[]), CAST(:metas AS jsonb[]), "
                "CAST(:hashes AS text[])) AS t(external_id, text, metadata, content_hash) "
                "ON CONFLICT (collection_id, external_id) DO UPDATE SET "
                "text = excluded.text, metadata = excluded.metadata, content_hash = excluded.content_hash, "
                "status = CASE WHEN d.content_hash = excluded.content_hash AND d.status = 'ready' "
                "THEN 'ready' ELSE 'pending' END, "
                "error = NULL, updated_at = now() "
                "WHERE d.content_hash <> excluded.content_hash OR d.status <> 'ready' "
                "OR d.metadata <> excluded.metadata "
                "RETURNING d.id, d.status, d.content_hash"
            ),
            {
                "cid": collection_id,
                "ids": [d.external_id for d in docs],
                "texts": [d.text for d in docs],
                "metas": [json.dumps(d.metadata) for d in docs],
                "hashes": [d.content_hash for d in docs],
            },
        )
        return [PendingDocument(r.id, "", r.content_hash) for r in rows if r.status == DocumentStatus.PENDING.value]

    def pending_documents(self, ids: Sequence[int]) -> list[PendingDocument]:
        rows = self.session.execute(
            select(Document.id, Document.text, Document.content_hash).where(
                Document.id.in_(list(ids)), Document.status == DocumentStatus.PENDING.value
            )
        )
        return [PendingDocument(*row) for row in rows]

    def lock_pending(self, hashes: dict[int, str]) -> set[int]:
        """Lock the documents still pending at the given content; return their ids."""
        rows = self.session.execute(
            select(Document.id, Document.content_hash)
            .where(Document.id.in_(list(hashes)), Document.status == DocumentStatus.PENDING.value)
            .order_by(Document.id)
            .with_for_update()
        )
        return {doc_id for doc_id, digest in rows if hashes.get(doc_id) == digest}

    def mark_ready(self, chunk_counts: dict[int, int]) -> None:
        if not chunk_counts:
            return
        self.session.execute(
            text(
                "UPDATE documents d SET status = 'ready', error = NULL, chunk_count = t.n, updated_at = now() "
                "FROM unnest(CAST(:ids AS bigint[]), CAST(:ns AS integer[])) AS t(id, n) WHERE d.id = t.id"
            ),
            {"ids": list(chunk_counts), "ns": list(chunk_counts.values())},
        )

    def mark_failed(self, ids: Sequence[int], error: str) -> None:
        if ids:
            self.session.execute(
                update(Document)
                .where(Document.id.in_(list(ids)))
                .values(status=DocumentStatus.FAILED.value, error=error, updated_at=func.now())
            )

    def external_ids(self, ids: Sequence[int]) -> dict[int, str]:
        rows = self.session.execute(select(Document.id, Document.external_id).where(Document.id.in_(list(ids))))
        return {doc_id: external_id for doc_id, external_id in rows}

    def delete_chunks(self, collection_id: int, document_ids: Sequence[int]) -> None:
        """Delete documents' chunks and their vectors in every version of the collection."""
        if not document_ids:
            return
        ids = {"ids": list(document_ids)}
        for version in self.versions(collection_id):
            if self.vector_table_exists(version.id):
                self.session.execute(
                    text(
                        f"DELETE FROM {vector_table(version.id)} v USING chunks c "
                        "WHERE v.chunk_id = c.id AND c.document_id = ANY(:ids)"
                    ),
                    ids,
                )
        self.session.execute(text("DELETE FROM chunks WHERE document_id = ANY(:ids)"), ids)

    def chunks_of(self, document_ids: Sequence[int]) -> list[tuple[int, str]]:
        rows = self.session.execute(
            text("SELECT id, text FROM chunks WHERE document_id = ANY(:ids) ORDER BY document_id, idx"),
            {"ids": list(document_ids)},
        )
        return [(r.id, r.text) for r in rows]

    # Batches.

    def add_batch(self, job_id: uuid.UUID, seq: int, document_ids: Sequence[int], hashes: Sequence[str]) -> None:
        self.session.add(
            IngestBatch(job_id=job_id, seq=seq, document_ids=list(document_ids), content_hashes=list(hashes))
        )
        self.session.flush()

    def add_reembed_batches(self, job_id: uuid.UUID, collection_id: int, size: int) -> tuple[int, int]:
        """Split the collection's embedded documents into batches of ``size``; return (batches, documents)."""
        row = self.session.execute(
            text(
                "WITH numbered AS ("
                "  SELECT id, content_hash, (row_number() OVER (ORDER BY id) - 1) / :size AS seq "
                "  FROM documents WHERE collection_id = :cid AND status = 'ready'), "
                "inserted AS ("
                "  INSERT INTO ingest_batches (job_id, seq, document_ids, content_hashes, state) "
                "  SELECT :job, seq, array_agg(id ORDER BY id), array_agg(content_hash ORDER BY id), 'pending' "
                "  FROM numbered GROUP BY seq RETURNING seq, cardinality(document_ids) AS n) "
                "SELECT count(*) AS batches, coalesce(sum(n), 0) AS documents FROM inserted"
            ),
            {"size": size, "cid": collection_id, "job": job_id},
        ).one()
        return int(row.batches), int(row.documents)

    def batch(self, job_id: uuid.UUID, seq: int) -> IngestBatch | None:
        return self.session.get(IngestBatch, (job_id, seq))

    def claim_batch(self, job_id: uuid.UUID, seq: int) -> bool:
        """Mark a pending batch done; False if a delivery before this one already did."""
        result = self.session.execute(
            update(IngestBatch)
            .where(IngestBatch.job_id == job_id, IngestBatch.seq == seq, IngestBatch.state == BatchState.PENDING.value)
            .values(state=BatchState.DONE.value)
        )
        return result.rowcount == 1

    def pending_batches(self, job_id: uuid.UUID) -> list[int]:
        return list(
            self.session.scalars(
                select(IngestBatch.seq)
                .where(IngestBatch.job_id == job_id, IngestBatch.state == BatchState.PENDING.value)
                .order_by(IngestBatch.seq)
            )
        )

    # Vector tables.

    def vector_table_exists(self, version_id: int) -> bool:
        return bool(self.session.scalar(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": vector_table(version_id)}))

    def create_vector_table(self, version_id: int, dimension: int, *, fresh: bool = False) -> None:
        """Create a version's vector table; ``fresh`` first drops a leftover of the same name (a reused id)."""
        table = vector_table(version_id)
        if fresh:
            self.drop_vector_table(version_id)
        self.session.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                f"chunk_id bigint PRIMARY KEY, embedding vector({int(dimension)}) NOT NULL, sparse sparsevec)"
            )
        )

    def drop_vector_table(self, version_id: int) -> None:
        self.session.execute(text(f"DROP TABLE IF EXISTS {vector_table(version_id)}"))

    def build_index(self, version_id: int, *, m: int, ef_construction: int, memory: str) -> None:
        """Build the version's HNSW cosine index if it is missing (one builder at a time per version)."""
        table = vector_table(version_id)
        self.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _index_lock_key(version_id)})
        self.session.execute(text("SELECT set_config('maintenance_work_mem', :mem, true)"), {"mem": memory})
        self.session.execute(
            text(
                f"CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} USING hnsw (embedding vector_cosine_ops) "
                f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)})"
            )
        )

    def write_chunks(self, version_id: int, rows: Sequence[ChunkRow], vectors: Vectors) -> int:
        """Insert chunks and their vectors through one binary COPY; return how many vectors were new.

        Idempotent on (document, chunk index) and on the chunk's vector: a repeated call inserts nothing.
        """
        if not rows:
            return 0
        self._copy(
            "ingest_staging",
            "document_id bigint, idx integer, token_count integer, start_char integer, end_char integer, "
            "text text, embedding vector, sparse sparsevec",
            _chunk_copy_payload(rows, vectors),
        )
        # One statement: the vectors join the chunks just inserted (not the whole chunks table), so a batch
        # costs the same however large the collection. A chunk that already existed was written with its
        # vector in the same transaction, so skipping both is right.
        result = self.session.execute(
            text(
                "WITH inserted AS ("
                "  INSERT INTO chunks (document_id, idx, text, token_count, start_char, end_char) "
                "  SELECT document_id, idx, text, token_count, start_char, end_char FROM ingest_staging "
                "  ON CONFLICT (document_id, idx) DO NOTHING RETURNING id, document_id, idx) "
                f"INSERT INTO {vector_table(version_id)} (chunk_id, embedding, sparse) "
                "SELECT i.id, s.embedding, s.sparse FROM inserted i "
                "JOIN ingest_staging s ON s.document_id = i.document_id AND s.idx = i.idx "
                "ON CONFLICT (chunk_id) DO NOTHING"
            )
        )
        return result.rowcount

    def write_vectors(self, version_id: int, chunk_ids: Sequence[int], vectors: Vectors) -> int:
        """Insert vectors of existing chunks through one binary COPY; return how many were new."""
        if len(chunk_ids) == 0:
            return 0
        self._copy(
            "vector_staging",
            "chunk_id bigint, embedding vector, sparse sparsevec",
            _vector_copy_payload(chunk_ids, vectors),
        )
        result = self.session.execute(
            text(
                f"INSERT INTO {vector_table(version_id)} (chunk_id, embedding, sparse) "
                "SELECT s.chunk_id, s.embedding, s.sparse FROM vector_staging s JOIN chunks c ON c.id = s.chunk_id "
                "ON CONFLICT (chunk_id) DO NOTHING"
            )
        )
        return result.rowcount

    def _copy(self, staging: str, columns: str, payload: bytes) -> None:
        """Load ``payload`` (binary COPY) into a session-local staging table, emptied at commit and here.

        The transaction commits without waiting for its WAL flush: losing it in a crash is harmless, as
        its batch then stays pending and is run again (the reaper re-enqueues it).
        """
        self.session.execute(text("SELECT set_config('synchronous_commit', 'off', true)"))
        self.session.execute(text(f"CREATE TEMP TABLE IF NOT EXISTS {staging} ({columns}) ON COMMIT DELETE ROWS"))
        self.session.execute(text(f"DELETE FROM {staging}"))
        names = ", ".join(column.split()[0] for column in columns.split(", "))
        raw = self.session.connection().connection.driver_connection
        with raw.cursor() as cursor, cursor.copy(f"COPY {staging} ({names}) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.write(payload)

    # Search and export.

    def search(
        self,
        version: CollectionVersion,
        vector: np.ndarray,
        *,
        top_k: int,
        metadata_filter: dict[str, Any] | None,
        ef_search: int,
    ) -> list[SearchRow]:
        """Return the ``top_k`` chunks nearest to ``vector`` by cosine, best first (HNSW when indexed)."""
        assert version.dimension is not None
        table = vector_table(version.id)
        query_vector = f"CAST(:q AS vector({int(version.dimension)}))"
        self.session.execute(text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": str(ef_search)})
        params: dict[str, Any] = {"q": _vector_text(vector), "k": top_k}
        where = ""
        if metadata_filter:
            # Filtered: let the index scan go on past ef_search candidates until top_k rows pass the filter.
            self.session.execute(text("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)"))
            where = "WHERE d.metadata @> CAST(:filter AS jsonb) "
            params["filter"] = json.dumps(metadata_filter)
        rows = self.session.execute(
            text(
                "WITH nearest AS MATERIALIZED ("
                f"  SELECT v.chunk_id, v.embedding <=> {query_vector} AS distance "
                f"  FROM {table} v JOIN chunks c ON c.id = v.chunk_id JOIN documents d ON d.id = c.document_id "
                f"  {where}ORDER BY v.embedding <=> {query_vector} LIMIT :k) "
                "SELECT d.external_id, c.idx, c.text, d.metadata, 1 - n.distance AS score "
                "FROM nearest n JOIN chunks c ON c.id = n.chunk_id JOIN documents d ON d.id = c.document_id "
                "ORDER BY n.distance, d.external_id, c.idx"
            ),
            params,
        )
        return [SearchRow(r.external_id, r.idx, r.text, r.metadata, float(r.score)) for r in rows]

    def search_hybrid(
        self,
        version: CollectionVersion,
        vector: np.ndarray,
        sparse: dict[int, float],
        sparse_dimension: int,
        *,
        top_k: int,
        metadata_filter: dict[str, Any] | None,
        ef_search: int,
        dense_weight: float,
        sparse_weight: float,
    ) -> list[SearchRow]:
        """Return the ``top_k`` chunks by (dense_weight * cosine + sparse_weight * sparse dot) / (sum of weights).

        Candidates are the ``max(top_k, ef_search)`` nearest by dense cosine (HNSW when indexed; left out when
        ``dense_weight`` is 0, and then so is every chunk sharing no token with the query) and as many by sparse
        inner product (exact), re-scored together: BGE-M3's authors combine its dense and lexical scores this way.
        """
        assert version.dimension is not None
        table = vector_table(version.id)
        query_vector = f"CAST(:q AS vector({int(version.dimension)}))"
        self.session.execute(text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": str(ef_search)})
        params: dict[str, Any] = {
            "q": _vector_text(vector),
            "s": _sparse_text(sparse, sparse_dimension),
            "k": top_k,
            "n": max(top_k, ef_search),
            "wd": dense_weight,
            "ws": sparse_weight,
        }
        joins = f"FROM {table} v JOIN chunks c ON c.id = v.chunk_id JOIN documents d ON d.id = c.document_id "
        where = ""
        if metadata_filter:
            self.session.execute(text("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)"))
            where = "AND d.metadata @> CAST(:filter AS jsonb) "
            params["filter"] = json.dumps(metadata_filter)
        candidates = [
            f"lexical AS MATERIALIZED (SELECT v.chunk_id {joins}WHERE v.sparse IS NOT NULL {where}"
            "ORDER BY v.sparse <#> CAST(:s AS sparsevec) LIMIT :n)"
        ]
        union = "SELECT chunk_id FROM lexical"
        # Sparse alone: a chunk that shares no token with the query scores 0 and is no match.
        shared = "" if dense_weight > 0 else "AND v.sparse <#> CAST(:s AS sparsevec) < 0 "
        if dense_weight > 0:
            candidates.append(
                f"dense AS MATERIALIZED (SELECT v.chunk_id {joins}WHERE true {where}"
                f"ORDER BY v.embedding <=> {query_vector} LIMIT :n)"
            )
            union += " UNION SELECT chunk_id FROM dense"
        rows = self.session.execute(
            text(
                f"WITH {', '.join(candidates)}, scored AS MATERIALIZED ("
                f"  SELECT v.chunk_id, (:wd * (1 - (v.embedding <=> {query_vector})) "
                "    + :ws * COALESCE(-(v.sparse <#> CAST(:s AS sparsevec)), 0)) / (:wd + :ws) AS score "
                f"  FROM {table} v WHERE v.chunk_id IN ({union}) {shared}ORDER BY score DESC LIMIT :k) "
                "SELECT d.external_id, c.idx, c.text, d.metadata, n.score "
                "FROM scored n JOIN chunks c ON c.id = n.chunk_id JOIN documents d ON d.id = c.document_id "
                "ORDER BY n.score DESC, d.external_id, c.idx"
            ),
            params,
        )
        return [SearchRow(r.external_id, r.idx, r.text, r.metadata, float(r.score)) for r in rows]

    def export_rows(self, collection_id: int, version_id: int, *, vectors_as: str) -> Iterator[Sequence[Any]]:
        """Yield (document id, chunk index, chunk text, metadata, vector, sparse) in document order, streamed.

        ``sparse`` is pgvector's text form of the BGE-M3 sparse weights (see ``sparse_weights``), or None.

        ``vectors_as`` is "text" (pgvector's JSON-compatible text form) or "array" (a list of floats).
        """
        cast = "text" if vectors_as == "text" else "real[]"
        result = self.session.execute(
            text(
                f"SELECT d.external_id, c.idx, c.text, d.metadata, v.embedding::{cast} AS embedding, "
                "v.sparse::text AS sparse "
                f"FROM documents d JOIN chunks c ON c.document_id = d.id "
                f"LEFT JOIN {vector_table(version_id)} v ON v.chunk_id = c.id "
                "WHERE d.collection_id = :cid AND d.status = 'ready' ORDER BY d.id, c.idx"
            ).execution_options(yield_per=1000),
            {"cid": collection_id},
        )
        yield from result


def _index_lock_key(version_id: int) -> int:
    # pg_advisory_xact_lock key space shared with other features: tag ours in the high bits.
    return (0x69647178 << 32) | int(version_id)


def _vector_text(vector: np.ndarray) -> str:
    return "[" + ",".join(map(repr, np.asarray(vector, dtype=np.float32).tolist())) + "]"


def sparse_weights(literal: str) -> dict[str, float]:
    """Return pgvector's sparsevec text ``{1:0.5,8:0.25}/dim`` as {0-based token id: weight}, as /vectorize-hybrid."""
    body = literal.rsplit("/", 1)[0].strip("{}")
    pairs = (pair.split(":") for pair in body.split(",") if pair)
    return {str(int(i) - 1): float(w) for i, w in pairs}


def _sparse_text(weights: dict[int, float], dimension: int) -> str:
    # pgvector's text form numbers dimensions from 1.
    return "{" + ",".join(f"{int(i) + 1}:{float(w)!r}" for i, w in sorted(weights.items())) + f"}}/{int(dimension)}"


def _vector_field_header(dimension: int) -> bytes:
    # A pgvector value in binary COPY: int32 length, then int16 dim, int16 unused, float32 big-endian values.
    return struct.pack("!ihh", 4 + 4 * dimension, dimension, 0)


_NULL_FIELD = struct.pack("!i", -1)


def _sparse_field(weights: dict[int, float] | None, dimension: int | None) -> bytes:
    """A sparsevec value in binary COPY: int32 length, then int32 dim, nnz, unused, 0-based sorted ids, floats."""
    if weights is None or dimension is None:
        return _NULL_FIELD
    ids = sorted(weights)
    body = struct.pack(f"!iii{len(ids)}i{len(ids)}f", dimension, len(ids), 0, *ids, *(weights[i] for i in ids))
    return struct.pack("!i", len(body)) + body


def _sparse_fields(vectors: Vectors) -> list[bytes]:
    if vectors.sparse is None:
        return [_NULL_FIELD] * len(vectors)
    return [_sparse_field(weights, vectors.sparse_dimension) for weights in vectors.sparse]


def _chunk_copy_payload(rows: Sequence[ChunkRow], vectors: Vectors) -> bytes:
    dimension = vectors.dense.shape[1]
    big_endian = np.ascontiguousarray(vectors.dense, dtype=">f4")
    vector_header = _vector_field_header(dimension)
    parts = [_COPY_HEADER]
    for row, vector, sparse in zip(rows, big_endian, _sparse_fields(vectors), strict=True):
        encoded = row.text.encode("utf-8")
        parts.append(
            _CHUNK_ROW.pack(8, 8, row.document_id, 4, row.idx, 4, row.token_count, 4, row.start_char, 4, row.end_char)
        )
        parts += [struct.pack("!i", len(encoded)), encoded, vector_header, vector.tobytes(), sparse]
    parts.append(_COPY_TRAILER)
    return b"".join(parts)


def _vector_copy_payload(chunk_ids: Sequence[int], vectors: Vectors) -> bytes:
    count, dimension = vectors.dense.shape
    fields = [
        ("fields", ">i2"),
        ("id_len", ">i4"),
        ("id", ">i8"),
        ("vec_len", ">i4"),
        ("dim", ">i2"),
        ("unused", ">i2"),
        ("values", ">f4", (dimension,)),
    ]
    if vectors.sparse is None:  # the common case stays one numpy buffer: every sparse field is NULL (-1)
        fields.append(("sparse_null", ">i4"))
    records = np.empty(count, dtype=np.dtype(fields))
    records["fields"], records["id_len"], records["id"] = 3, 8, np.asarray(chunk_ids, dtype=np.int64)
    records["vec_len"], records["dim"], records["unused"] = 4 + 4 * dimension, dimension, 0
    records["values"] = vectors.dense
    if vectors.sparse is None:
        records["sparse_null"] = -1
        return _COPY_HEADER + records.tobytes() + _COPY_TRAILER
    parts = [_COPY_HEADER]
    for record, sparse in zip(records, _sparse_fields(vectors), strict=True):
        parts += [record.tobytes(), sparse]
    parts.append(_COPY_TRAILER)
    return b"".join(parts)
