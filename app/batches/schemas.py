"""OpenAI's file and batch objects, and the body of POST /v1/batches."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from app.batches.repository import when
from app.models.batch import Batch, BatchFile

# OpenAI's metadata: at most 16 pairs, keys up to 64 characters, values up to 512.
MAX_METADATA_PAIRS = 16


class FileObject(BaseModel):
    id: str = Field(description="file-...")
    object: Literal["file"] = "file"
    bytes: int
    created_at: int = Field(description="seconds since the epoch")
    filename: str
    purpose: str = Field(description="batch (an input you uploaded) or batch_output (a batch's output or error file)")
    status: Literal["processed"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None

    @classmethod
    def of(cls, file: BatchFile) -> FileObject:
        return cls(
            id=file.id,
            bytes=file.bytes,
            created_at=when(file.created_at) or 0,
            filename=file.filename,
            purpose=file.purpose,
            expires_at=when(file.expires_at),
        )


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class ExpiresAfter(BaseModel):
    """OpenAI's expiration policy of a file: ``seconds`` after its creation (1 hour to 30 days)."""

    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"] = Field(description="created_at: the file's creation (the only anchor)")
    seconds: StrictInt = Field(ge=3600, le=2_592_000, description="3600 (1 hour) to 2592000 (30 days)")


class BatchCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"input_file_id": "file-abc", "endpoint": "/v1/embeddings", "completion_window": "24h"}]
        },
    )

    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: str = Field(description="/v1/embeddings (the only endpoint embedq batches)")
    completion_window: str = Field(description="24h (EMBEDQ_BATCH_COMPLETION_WINDOW_S long)")
    metadata: dict[str, str] | None = Field(default=None, description="up to 16 pairs, echoed back")
    output_expires_after: ExpiresAfter | None = Field(
        default=None, description="the output and error files expire this long after they are written"
    )


class BatchError(BaseModel):
    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchObject(BaseModel):
    id: str = Field(description="batch_...")
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: str = Field(
        description="validating, in_progress, finalizing, completed; or failed, expired, cancelling, cancelled"
    )
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, Any] | None
    job_id: str = Field(description="embedq extension: the job this batch runs as (GET /jobs/{id})")

    @classmethod
    def of(cls, batch: Batch) -> BatchObject:
        errors = BatchErrors(data=[BatchError(**e) for e in batch.errors]) if batch.errors else None
        return cls(
            id=batch.id,
            endpoint=batch.endpoint,
            errors=errors,
            input_file_id=batch.input_file_id,
            completion_window=batch.completion_window,
            status=batch.status,
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
            created_at=when(batch.created_at) or 0,
            in_progress_at=when(batch.in_progress_at),
            expires_at=when(batch.expires_at),
            finalizing_at=when(batch.finalizing_at),
            completed_at=when(batch.completed_at),
            failed_at=when(batch.failed_at),
            expired_at=when(batch.expired_at),
            cancelling_at=when(batch.cancelling_at),
            cancelled_at=when(batch.cancelled_at),
            request_counts=RequestCounts(total=batch.total, completed=batch.completed, failed=batch.failed),
            metadata=batch.batch_metadata,
            job_id=str(batch.job_id),
        )


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
