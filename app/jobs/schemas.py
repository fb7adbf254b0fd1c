"""Request and response bodies of the jobs API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, field_validator

from app.models.job import Job, JobKind, JobStatus
from app.webhooks.schemas import WebhookUrl

# Largest offset or cursor a query parameter takes: far beyond any page, inside Postgres's integers.
MAX_OFFSET = 2**31 - 1


class EncodingFormat(StrEnum):
    FLOAT = "float"
    BASE64 = "base64"


MAX_PROGRESS_MILESTONES = 10


def _distinct_ascending(milestones: list[int]) -> list[int]:
    if len(set(milestones)) != len(milestones):
        raise ValueError("progress_milestones has a percentage twice: list each once")
    return sorted(milestones)


ProgressMilestones = Annotated[
    list[Annotated[int, Field(ge=1, le=99)]],
    Field(
        min_length=1,
        max_length=MAX_PROGRESS_MILESTONES,
        description=(
            "percentages (1-99) at which to send a signed `job.progress` webhook event, once each, as progress "
            "first reaches them; the end of the job has its own event"
        ),
        examples=[[25, 50, 75]],
    ),
    AfterValidator(_distinct_ascending),
]


class EmbeddingJobCreate(BaseModel):
    """An asynchronous embedding job: one vector per input, in input order."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"input": ["first text", "second text"], "idempotency_key": "batch-42"}]},
    )

    input: Annotated[list[StrictStr], Field(min_length=1, description="texts to embed (at least one)")]
    model: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    webhook_url: WebhookUrl | None = None
    idempotency_key: Annotated[str | None, Field(min_length=1, max_length=255)] = None
    progress_milestones: ProgressMilestones | None = None

    @field_validator("input")
    @classmethod
    def _texts_are_usable(cls, texts: list[str]) -> list[str]:
        for i, t in enumerate(texts):
            if not t.strip():
                raise ValueError(f"input[{i}] is empty or only whitespace: remove it or give it some text")
            if "\x00" in t:
                raise ValueError(f"input[{i}] contains a NUL character (\\u0000): strip it before sending")
        return texts


class JobCounts(BaseModel):
    total: int
    done: int
    failed: int


class JobLinks(BaseModel):
    self: str
    results: str
    cancel: str
    errors: str | None = Field(default=None, description="the per-document error file of ingest/reembed jobs")


class ItemError(BaseModel):
    """A document an ingest job could not take: its id (when it had one), its line in the upload, and why."""

    document_id: str | None
    line: int | None
    error: str


class IngestProgress(BaseModel):
    """What an ingest or reembed job has done: `counts` are documents; these are chunks, rate, ETA, errors."""

    chunks: JobCounts = Field(description="chunks made so far; failed ones belong to failed documents")
    skipped: int = Field(description="documents left alone because their content hash was unchanged")
    input_complete: bool = Field(description="false while the upload is still streaming in, or a source's shards read")
    shards: JobCounts | None = Field(
        default=None, description="a source job's shards (Parquet row groups, byte ranges, files); null for uploads"
    )
    documents_per_s: float
    chunks_per_s: float
    eta_s: float | None = Field(description="seconds left at the current rate; null until the upload has ended")
    errors: list[ItemError] = Field(description="the first per-document errors; `links.errors` has them all")

    @classmethod
    def of(cls, job: Job, now: datetime) -> IngestProgress:
        elapsed = max((job.finished_at or now) - (job.started_at or job.created_at), timedelta(0)).total_seconds()
        processed = job.done + job.failed
        docs_rate = (processed - job.skipped) / elapsed if elapsed > 0 else 0.0
        remaining = max(job.total - processed, 0)
        eta = None
        if job.input_complete and job.finished_at is None:
            eta = 0.0 if remaining == 0 else (remaining / docs_rate if docs_rate > 0 else None)
        return cls(
            chunks=JobCounts(total=job.chunks_total, done=job.chunks_done, failed=job.chunks_total - job.chunks_done),
            skipped=job.skipped,
            input_complete=job.input_complete,
            shards=(
                JobCounts(total=job.shards_total, done=job.shards_done, failed=job.shards_failed)
                if job.params.get("source")
                else None
            ),
            documents_per_s=round(docs_rate, 2),
            chunks_per_s=round(job.chunks_done / elapsed, 2) if elapsed > 0 else 0.0,
            eta_s=round(eta, 1) if eta is not None else None,
            errors=[ItemError.model_validate(e) for e in (job.item_errors or [])],
        )


class JobOut(BaseModel):
    id: uuid.UUID
    kind: JobKind
    status: JobStatus
    model: str
    progress: float = Field(description="0 to 100")
    counts: JobCounts
    message: str | None
    error: str | None
    webhook_url: str | None
    idempotency_key: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: JobLinks
    ingest: IngestProgress | None = Field(default=None, description="ingest and reembed jobs only")

    @classmethod
    def of(cls, job: Job) -> JobOut:
        base = f"/jobs/{job.id}"
        ingesting = job.kind in (JobKind.INGEST.value, JobKind.REEMBED.value)
        return cls(
            id=job.id,
            kind=JobKind(job.kind),
            status=JobStatus(job.status),
            model=job.model,
            progress=job.progress,
            counts=JobCounts(total=job.total, done=job.done, failed=job.failed),
            message=job.message,
            error=job.error,
            webhook_url=job.webhook_url,
            idempotency_key=job.idempotency_key,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            links=JobLinks(
                self=base,
                results=f"{base}/results",
                cancel=f"{base}/cancel",
                errors=f"{base}/errors" if ingesting else None,
            ),
            ingest=IngestProgress.of(job, datetime.now(UTC)) if ingesting else None,
        )


class JobList(BaseModel):
    data: list[JobOut]
    next_offset: int | None = Field(description="offset of the next page, null on the last one")


class ResultItem(BaseModel):
    index: int
    embedding: list[float] | str | None = Field(
        description="the vector (a list of floats, or base64 of little-endian float32); null until embedded"
    )
    error: str | None = None


class JobResults(BaseModel):
    object: str = "list"
    job_id: uuid.UUID
    status: JobStatus
    total: int
    encoding_format: EncodingFormat
    data: list[ResultItem]
    next_offset: int | None
