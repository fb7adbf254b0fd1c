"""Jobs and their per-input results: the state of every job lives here, not in Celery's result backend."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
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


class JobKind(StrEnum):
    EMBEDDINGS = "embeddings"
    FINE_TUNE = "fine_tune"
    FINE_TUNE_LORA = "fine_tune_lora"
    INGEST = "ingest"
    REEMBED = "reembed"
    BATCH = "batch"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    model: Mapped[str] = mapped_column(String(512))
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # Whose job it is, and which key made it (per-key concurrency limit); idempotency keys are per tenant.
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)
    api_key_id: Mapped[str | None] = mapped_column(String(32))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Ingest and reembed jobs (app/collections): total/done/failed count documents; these count their
    # chunks, the documents skipped as unchanged (within done), whether the upload has ended (a job cannot
    # finish before), and the first per-document errors (the whole list is in ingest_errors).
    chunks_total: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    chunks_done: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    skipped: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    input_complete: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    item_errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list, server_default=text("'[]'"))
    # Source jobs (app/sources): the shards planned, read, and broken mid-way.
    shards_total: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    shards_done: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    shards_failed: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # Tokens encoded for the job (embedding inputs, or the chunks an ingest wrote): usage per tenant (GET /usage).
    tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))

    __table_args__ = (
        Index("ix_jobs_status_kind_created", "status", "kind", "created_at"),
        Index("ix_jobs_tenant_created", "tenant", "created_at"),
        Index("ix_jobs_api_key_status", "api_key_id", "status"),
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
    )


class JobResult(Base):
    """One input of a job: its text until embedded, then its vector (or the reason it failed)."""

    __tablename__ = "job_results"

    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    input: Mapped[str] = mapped_column(Text)
    embedding: Mapped[Any | None] = mapped_column(Vector())
    error: Mapped[str | None] = mapped_column(Text)
