"""Collections of documents, their chunks, vector versions and the bookkeeping of ingestion jobs.

Vectors do not live in a table declared here: each vector version has a table of its own,
``collection_vectors_<version id>`` (see ``app.collections.vector_store``), created when the version's
dimension is known and dropped with the version.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base
from app.models.api_key import DEFAULT_TENANT


class VersionStatus(StrEnum):
    BUILDING = "building"  # a reembed job is filling it
    ACTIVE = "active"  # what search reads; exactly one per collection
    RETIRED = "retired"  # replaced by a newer version (its vector table is dropped)
    FAILED = "failed"  # its reembed job failed or was cancelled


class IndexStatus(StrEnum):
    NONE = "none"
    BUILDING = "building"
    READY = "ready"


class VectorStorage(StrEnum):
    """How a version's vectors are stored: pgvector's ``vector`` (float32) or ``halfvec`` (float16, half the bytes)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"


class DocumentStatus(StrEnum):
    PENDING = "pending"  # stored, waiting for chunking and embedding
    READY = "ready"  # its chunks and vectors are in the active version
    FAILED = "failed"


class BatchState(StrEnum):
    PENDING = "pending"
    DONE = "done"


class Collection(Base):
    """A named corpus embedded with one model at a time (its active version's)."""

    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)
    name: Mapped[str] = mapped_column(String(100))
    max_tokens: Mapped[int] = mapped_column(Integer)
    overlap_tokens: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    # Names are per tenant: another tenant may use the same name without learning that it is taken.
    __table_args__ = (UniqueConstraint("tenant", "name", name="uq_collections_tenant_name"),)


class CollectionVersion(Base):
    """One set of vectors of a collection, made by one model; search reads the active one."""

    __tablename__ = "collection_versions"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    collection_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("collections.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(512))
    # None until known: read from the model folder by the API, or set by the first worker that loads it.
    dimension: Mapped[int | None] = mapped_column(Integer)
    # The type of its table's vector column (``VectorStorage``): fixed when the table is made.
    storage: Mapped[str] = mapped_column(
        String(16), default=VectorStorage.FLOAT32.value, server_default=VectorStorage.FLOAT32.value
    )
    status: Mapped[str] = mapped_column(String(16))
    index_status: Mapped[str] = mapped_column(String(16), default=IndexStatus.NONE.value)
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("collection_id", "number"),
        Index(
            "uq_collection_versions_one_active",
            "collection_id",
            unique=True,
            postgresql_where=text("status = 'active'"),
        ),
    )


# (Inside Document, ``text`` is its column.)
_FROM_A_SOURCE = text("source_object IS NOT NULL")


class Document(Base):
    """A document as uploaded: its id in the caller's world, its text, metadata and content hash."""

    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    collection_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("collections.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    # The metadata of a new text while the chunks stored are still the old text's (metadata stays theirs):
    # it replaces ``meta`` when the new text is embedded, or fails, so a search never pairs old text with it.
    pending_meta: Mapped[dict[str, Any] | None] = mapped_column("pending_metadata", JSONB)
    content_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=DocumentStatus.PENDING.value)
    error: Mapped[str | None] = mapped_column(Text)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    # The object of a source it was read from (null: uploaded): a re-sync with delete_missing removes it
    # when that object is gone.
    source_object: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __table_args__ = (
        UniqueConstraint("collection_id", "external_id"),
        Index(
            "ix_documents_source_object",
            "collection_id",
            "source_object",
            postgresql_where=_FROM_A_SOURCE,
        ),
    )


class Chunk(Base):
    """A window of a document's tokens: its text (returned by search) and where it sits in the document."""

    __tablename__ = "chunks"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    document_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("documents.id", ondelete="CASCADE"))
    idx: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    start_char: Mapped[int] = mapped_column(Integer)
    end_char: Mapped[int] = mapped_column(Integer)

    __table_args__ = (UniqueConstraint("document_id", "idx"),)


class IngestBatch(Base):
    """One task's worth of an ingest or reembed job: which documents, at which content, and whether it ran.

    Flipping ``state`` from pending to done in the transaction that writes the batch's chunks is what makes
    a redelivered task change nothing, counts included.
    """

    __tablename__ = "ingest_batches"

    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    content_hashes: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    state: Mapped[str] = mapped_column(String(16), default=BatchState.PENDING.value)


class IngestError(Base):
    """One document an ingest job could not take, and why: the job's error file."""

    __tablename__ = "ingest_errors"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"))
    document_id: Mapped[str | None] = mapped_column(Text)
    line: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_ingest_errors_job_id", "job_id", "id"),)
