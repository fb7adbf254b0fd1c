"""All SQL about collections, their versions, documents, ingest batches and per-document errors.

Chunks and vectors are ``vector_store``'s; the jobs that fill a collection are ``app.jobs``'.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text, update
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


@dataclass(frozen=True)
class DocumentInput:
    external_id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str
    source_object: str | None = None  # the source object it was read from; None: uploaded


@dataclass(frozen=True)
class PendingDocument:
    id: int
    text: str
    content_hash: str


@dataclass(frozen=True)
class DocumentCounts:
    documents: int
    pending: int
    ready: int
    failed: int
    chunks: int


# The chunks a document has stored were cut from a text other than the one being written (or than its own,
# while a new text waits to be embedded): then its metadata must stay theirs until they are replaced.
_OTHER_TEXTS_CHUNKS = "(d.chunk_count > 0 AND (d.content_hash <> excluded.content_hash OR d.status <> 'ready'))"


class CollectionRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    # Collections and versions.

    def named(self, name: str, principal: Principal, *, lock: bool = False) -> list[Collection]:
        """Return the collections called ``name`` that ``principal`` may see, the caller's own tenant's first.

        Only an admin can get more than one (names are unique per tenant). ``lock`` takes FOR NO KEY UPDATE: it
        serializes starting jobs on the collection (and deleting it) but, unlike FOR UPDATE, lets other uploads'
        document inserts check their foreign key; blocked there, holding documents that the upload starting
        under the lock goes on to upsert, they deadlocked with it.
        """
        query = (
            select(Collection)
            .where(Collection.name == name, visible_to(principal, Collection.tenant))
            .order_by(Collection.tenant != principal.tenant, Collection.id)
        )
        return list(self.session.scalars(query.with_for_update(key_share=True) if lock else query))

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
        """Return a version; with ``lock``, its row locked and its attributes read afresh (not the session's copy)."""
        query = select(CollectionVersion).where(CollectionVersion.id == version_id)
        if lock:
            query = query.with_for_update().execution_options(populate_existing=True)
        return self.session.scalar(query)

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

    def document_counts(self, collection_id: int) -> DocumentCounts:
        """Return the collection's documents by status, and the chunks of the ready ones."""
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
        return DocumentCounts(row.documents, row.pending, row.ready, row.failed, int(row.chunks))

    # Per-document errors.

    def add_errors(self, job_id: uuid.UUID, errors: Sequence[tuple[str | None, int | None, str]]) -> None:
        """Record (document id, line, error) rows in the job's error file."""
        self.session.execute(
            IngestError.__table__.insert(),
            [{"job_id": job_id, "document_id": d, "line": line, "error": e} for d, line, e in errors],
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

        A document whose content hash is unchanged and already embedded only gets its metadata updated. One
        whose stored chunks are another text's keeps the metadata they were stored with until its new text is
        embedded (``pending_metadata``; ``mark_ready`` and ``mark_failed`` swap it in).
        Rows are written, and so locked, in ``external_id`` order, the order ``lock_pending`` locks in too.
        """
        rows = self.session.execute(
            text(
                "INSERT INTO documents AS d (collection_id, external_id, text, metadata, content_hash, status, "
                "chunk_count, source_object) "
                "SELECT :cid, t.external_id, t.text, t.metadata, t.content_hash, 'pending', 0, t.source_object "
                "FROM unnest(CAST(:ids AS text[]), CAST(:texts AS text[]), CAST(:metas AS jsonb[]), "
                "CAST(:hashes AS text[]), CAST(:objects AS text[])) "
                "AS t(external_id, text, metadata, content_hash, source_object) "
                "ORDER BY t.external_id "
                "ON CONFLICT (collection_id, external_id) DO UPDATE SET "
                # While the chunks stored are another text's, the metadata stays theirs and the new one waits.
                f"metadata = CASE WHEN {_OTHER_TEXTS_CHUNKS} THEN d.metadata ELSE excluded.metadata END, "
                f"pending_metadata = CASE WHEN {_OTHER_TEXTS_CHUNKS} THEN excluded.metadata END, "
                "text = excluded.text, content_hash = excluded.content_hash, "
                "source_object = excluded.source_object, "
                "status = CASE WHEN d.content_hash = excluded.content_hash AND d.status = 'ready' "
                "THEN 'ready' ELSE 'pending' END, "
                "error = NULL, updated_at = now() "
                "WHERE d.content_hash <> excluded.content_hash OR d.status <> 'ready' "
                "OR d.metadata <> excluded.metadata OR d.source_object IS DISTINCT FROM excluded.source_object "
                "RETURNING d.id, d.status, d.content_hash"
            ),
            {
                "cid": collection_id,
                "ids": [d.external_id for d in docs],
                "texts": [d.text for d in docs],
                "metas": [json.dumps(d.metadata) for d in docs],
                "hashes": [d.content_hash for d in docs],
                "objects": [d.source_object for d in docs],
            },
        )
        return [PendingDocument(r.id, "", r.content_hash) for r in rows if r.status == DocumentStatus.PENDING.value]

    def source_documents(self, collection_id: int, object_uris: Sequence[str]) -> list[int]:
        """Return the ids of the collection's documents read from the given source objects."""
        return list(
            self.session.scalars(
                select(Document.id).where(
                    Document.collection_id == collection_id, Document.source_object.in_(list(object_uris))
                )
            )
        )

    def objects_not_ready(self, collection_id: int) -> set[str]:
        """Return the source objects some of whose documents are not embedded (pending, or failed)."""
        return set(
            self.session.scalars(
                select(Document.source_object)
                .where(
                    Document.collection_id == collection_id,
                    Document.source_object.is_not(None),
                    Document.status != DocumentStatus.READY.value,
                )
                .distinct()
            )
        )

    def delete_documents(self, ids: Sequence[int]) -> None:
        """Delete documents (their chunks go with them; delete their vectors first, with ``VectorStore``)."""
        if ids:
            self.session.execute(text("DELETE FROM documents WHERE id = ANY(:ids)"), {"ids": list(ids)})

    def next_batch_seq(self, job_id: uuid.UUID) -> int:
        """Return the first free batch number of a job (call with the job's row locked)."""
        highest = self.session.scalar(select(func.max(IngestBatch.seq)).where(IngestBatch.job_id == job_id))
        return 0 if highest is None else int(highest) + 1

    def pending_documents(self, ids: Sequence[int]) -> list[PendingDocument]:
        rows = self.session.execute(
            select(Document.id, Document.text, Document.content_hash).where(
                Document.id.in_(list(ids)), Document.status == DocumentStatus.PENDING.value
            )
        )
        return [PendingDocument(*row) for row in rows]

    def lock_pending(self, hashes: dict[int, str]) -> set[int]:
        """Lock the documents still pending at the given content; return their ids.

        Locked in ``external_id`` order, as ``upsert_documents`` writes them: uploads and batches that share
        documents then always wait for each other in the same order, never in a cycle (a deadlock). Ids
        would not do: they follow the order documents were first inserted, across batches not their names'.
        """
        rows = self.session.execute(
            select(Document.id, Document.content_hash)
            .where(Document.id.in_(list(hashes)), Document.status == DocumentStatus.PENDING.value)
            .order_by(Document.external_id)
            .with_for_update()
        )
        return {doc_id for doc_id, digest in rows if hashes.get(doc_id) == digest}

    def mark_ready(self, chunk_counts: dict[int, int]) -> None:
        if not chunk_counts:
            return
        self.session.execute(
            text(
                "UPDATE documents d SET status = 'ready', error = NULL, chunk_count = t.n, updated_at = now(), "
                "metadata = coalesce(d.pending_metadata, d.metadata), pending_metadata = NULL "
                "FROM unnest(CAST(:ids AS bigint[]), CAST(:ns AS integer[])) AS t(id, n) WHERE d.id = t.id"
            ),
            {"ids": list(chunk_counts), "ns": list(chunk_counts.values())},
        )

    def mark_failed(self, ids: Sequence[int], error: str) -> None:
        if ids:
            self.session.execute(
                update(Document)
                .where(Document.id.in_(list(ids)))
                .values(
                    status=DocumentStatus.FAILED.value,
                    error=error,
                    updated_at=func.now(),
                    chunk_count=0,
                    # Its chunks were dropped with the failure: the metadata of the text it holds applies.
                    meta=func.coalesce(Document.pending_meta, Document.meta),
                    pending_meta=None,
                )
            )

    def external_ids(self, ids: Sequence[int]) -> dict[int, str]:
        rows = self.session.execute(select(Document.id, Document.external_id).where(Document.id.in_(list(ids))))
        return {doc_id: external_id for doc_id, external_id in rows}

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
