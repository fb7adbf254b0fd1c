"""Request and response bodies of the jobs API."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StrictStr, field_validator

from app.models.job import Job, JobKind, JobStatus


class EncodingFormat(StrEnum):
    FLOAT = "float"
    BASE64 = "base64"


class EmbeddingJobCreate(BaseModel):
    """An asynchronous embedding job: one vector per input, in input order."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"input": ["first text", "second text"], "idempotency_key": "batch-42"}]},
    )

    input: Annotated[list[StrictStr], Field(min_length=1, description="texts to embed (at least one)")]
    model: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    webhook_url: AnyHttpUrl | None = None
    idempotency_key: Annotated[str | None, Field(min_length=1, max_length=255)] = None

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

    @classmethod
    def of(cls, job: Job) -> JobOut:
        base = f"/jobs/{job.id}"
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
            links=JobLinks(self=base, results=f"{base}/results", cancel=f"{base}/cancel"),
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
