"""OpenAI Batch API state: uploaded files, batches, a batch's requests and their results.

A file's bytes live in the artifact store (``storage_key``); only its metadata is here. A batch is an
embedq job of kind ``batch`` (``job_id``): the job carries the lifecycle every job has (queued, running,
a terminal status, counts, the cancel flag), the batch row what OpenAI's batch object shows on top of it.
Results are keyed by (batch, custom_id), so a redelivered task writes nothing twice.
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
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base
from app.models.api_key import DEFAULT_TENANT


class FilePurpose(StrEnum):
    BATCH = "batch"
    BATCH_OUTPUT = "batch_output"


class BatchStatus(StrEnum):
    """OpenAI's batch statuses."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)


class BatchFile(Base):
    """One file of the Files API: an uploaded batch input, or a batch's output or error file."""

    __tablename__ = "batch_files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # OpenAI's expires_after: from then on the file is gone to the API, and the maintenance sweep deletes it.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_batch_files_tenant_created", "tenant", "created_at"),
        Index("ix_batch_files_expires_at", "expires_at", postgresql_where=text("expires_at IS NOT NULL")),
    )


class Batch(Base):
    """One batch: OpenAI's batch object on top of its job (kind ``batch``)."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), unique=True
    )
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)
    input_file_id: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(64))
    completion_window: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.VALIDATING.value)
    # The status finalizing leads to (completed, cancelled, expired or failed): set once, by whoever ends it.
    ending: Mapped[str | None] = mapped_column(String(16))
    batch_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    # First line of every task the requests were cut into (by a token budget), ascending.
    chunk_starts: Mapped[list[int]] = mapped_column(JSONB, default=list)
    total: Mapped[int] = mapped_column(Integer, default=0)
    completed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    # OpenAI's output_expires_after: the output and error files expire this long after they are made.
    output_expires_after_s: Mapped[int | None] = mapped_column(Integer)
    output_file_id: Mapped[str | None] = mapped_column(String(64))
    error_file_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    in_progress_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finalizing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_batches_tenant_created", "tenant", "created_at"),)


class BatchRequest(Base):
    """One line of a batch's input file, validated: its custom_id and the /v1/embeddings body it asks for."""

    __tablename__ = "batch_requests"

    batch_id: Mapped[str] = mapped_column(String(64), ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    custom_id: Mapped[str] = mapped_column(Text)
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)

    __table_args__ = (UniqueConstraint("batch_id", "custom_id", name="uq_batch_requests_batch_custom_id"),)


class BatchResult(Base):
    """The outcome of one request: its vectors (little-endian float32, row-major) and usage, or its error body."""

    __tablename__ = "batch_results"

    batch_id: Mapped[str] = mapped_column(String(64), ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    custom_id: Mapped[str] = mapped_column(Text, primary_key=True)
    line: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int] = mapped_column(SmallInteger)
    model: Mapped[str | None] = mapped_column(String(512))
    vectors: Mapped[bytes | None] = mapped_column(LargeBinary)
    dimension: Mapped[int | None] = mapped_column(Integer)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index("ix_batch_results_batch_line", "batch_id", "line"),)
