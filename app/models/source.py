"""What reading a source takes: the shards of a source job, and the objects a collection last synced from.

A shard is one task's share of a source (``app/sources``): some row groups of a Parquet file, a byte range
of a JSONL or CSV file, or a whole small file. Its state is claimed with conditional UPDATEs, so a shard
delivered twice, or re-enqueued by the reaper, is read and written once.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base


class ShardState(StrEnum):
    PENDING = "pending"
    DONE = "done"  # its documents are written (and their batches sent)
    FAILED = "failed"  # its object broke mid-way: what was read is written, the reason is in the errors file


class ShardKind(StrEnum):
    ROW_GROUPS = "row_groups"  # Parquet row groups [start, stop)
    BYTES = "bytes"  # the lines that begin in bytes [start, stop) of a JSONL or CSV file
    WHOLE = "whole"  # a whole file (small files, plain text)


class IngestShard(Base):
    """One shard of a source job."""

    __tablename__ = "ingest_shards"

    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    object_uri: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    start: Mapped[int] = mapped_column(BigInteger)
    stop: Mapped[int] = mapped_column(BigInteger)
    # The object as listed (etag, size, mtime): stored as the collection's synced state once all its shards are in.
    signature: Mapped[dict[str, Any]] = mapped_column(JSONB)
    state: Mapped[str] = mapped_column(String(16), default=ShardState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    documents: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class SourceObject(Base):
    """An object a collection was synced from, as it was then: a re-sync skips it while its signature holds."""

    __tablename__ = "source_objects"

    collection_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True
    )
    object_uri: Mapped[str] = mapped_column(Text, primary_key=True)
    source_uri: Mapped[str] = mapped_column(Text)  # the source (prefix or glob) that listed it
    signature: Mapped[dict[str, Any]] = mapped_column(JSONB)
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="SET NULL"))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
