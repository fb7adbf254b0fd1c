"""HTTP routes of OpenAI's Files and Batch APIs under /v1: errors come in OpenAI's ``{"error": {...}}`` shape."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.artifacts.store import ArtifactStore
from app.batches import files, service
from app.batches.schemas import BatchCreate, BatchList, BatchObject, FileDeleted, FileList, FileObject
from app.core.deps import SessionDep, SettingsDep
from app.keys.auth import PrincipalDep

router = APIRouter(prefix="/v1", tags=["batches"])

_ERRORS = {400: {"description": "bad input, named in the message"}, 404: {"description": "no such file or batch"}}
_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "JSONL of requests"},
                        "purpose": {"type": "string", "enum": ["batch"]},
                    },
                }
            }
        },
    }
}
Limit = Annotated[int, Query(ge=1, le=10_000, description="page size, capped to EMBEDQ_BATCH_LIST_MAX")]


@router.post(
    "/files",
    response_model=FileObject,
    openapi_extra=_UPLOAD_BODY,
    responses={**_ERRORS, 413: {"description": "over EMBEDQ_BATCH_MAX_UPLOAD_BYTES"}},
)
async def upload_file(
    request: Request, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> FileObject:
    """Upload a batch input file (multipart `file`, `purpose=batch`), streamed to the artifact store."""
    store = ArtifactStore.from_settings(settings)
    file_id = files.new_file_id()
    key = files.storage_key(principal.tenant, file_id)
    received = await files.receive_upload(request.stream(), request.headers.get("content-type"), store, key)
    file = await run_in_threadpool(files.record_file, session, file_id, received, key, principal)
    return FileObject.of(file)


@router.get("/files", response_model=FileList)
def list_files(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    purpose: str | None = None,
    after: str | None = Query(default=None, description="a file id: the page after it"),
    limit: Limit = 20,
    order: Literal["asc", "desc"] = Query(default="desc", description="by created_at: desc (newest first) or asc"),
) -> FileList:
    """List your files, newest first (or oldest first with order=asc)."""
    return files.list_files(
        session, principal, purpose=purpose, after=after, limit=min(limit, settings.batch_list_max), order=order
    )


@router.get("/files/{file_id}", response_model=FileObject, responses=_ERRORS)
def get_file(file_id: str, session: SessionDep, principal: PrincipalDep) -> FileObject:
    """Return a file's metadata."""
    return FileObject.of(files.get_file(session, file_id, principal))


_CONTENT = {200: {"description": "the file's bytes", "content": {"application/jsonl": {"schema": {"type": "string"}}}}}


@router.get("/files/{file_id}/content", response_class=StreamingResponse, responses={**_CONTENT, **_ERRORS})
async def file_content(file_id: str, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> Response:
    """Stream a file's bytes (a batch's output and error files are JSONL)."""
    file = await run_in_threadpool(files.get_file, session, file_id, principal)
    store = ArtifactStore.from_settings(settings)
    source = await run_in_threadpool(files.open_content, store, file.storage_key)
    return StreamingResponse(files.content_chunks(source), media_type="application/jsonl")


@router.delete("/files/{file_id}", response_model=FileDeleted, responses=_ERRORS)
def delete_file(file_id: str, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> FileDeleted:
    """Delete a file and its bytes."""
    files.delete_file(session, file_id, principal, ArtifactStore.from_settings(settings))
    return FileDeleted(id=file_id)


@router.post(
    "/batches",
    response_model=BatchObject,
    responses={**_ERRORS, 429: {"description": "the key's concurrent-job limit is reached"}},
)
def create_batch(body: BatchCreate, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> BatchObject:
    """Create a batch of /v1/embeddings requests from an uploaded file; it runs as a job of kind `batch`."""
    return BatchObject.of(service.create_batch(session, body, settings, principal))


@router.get("/batches", response_model=BatchList)
def list_batches(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    after: str | None = Query(default=None, description="a batch id: the page after it"),
    limit: Limit = 20,
) -> BatchList:
    """List your batches, newest first."""
    return service.list_batches(session, principal, after=after, limit=min(limit, settings.batch_list_max))


@router.get("/batches/{batch_id}", response_model=BatchObject, responses=_ERRORS)
def get_batch(batch_id: str, session: SessionDep, principal: PrincipalDep) -> BatchObject:
    """Return a batch: its status, request counts and files."""
    return BatchObject.of(service.get_batch(session, batch_id, principal))


@router.post(
    "/batches/{batch_id}/cancel",
    response_model=BatchObject,
    responses={**_ERRORS, 409: {"description": "it has ended"}},
)
def cancel_batch(batch_id: str, session: SessionDep, principal: PrincipalDep) -> BatchObject:
    """Cancel a batch: `cancelling` until what completed is written to its output file, then `cancelled`."""
    return BatchObject.of(service.cancel_batch(session, batch_id, principal))
