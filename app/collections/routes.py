"""HTTP routes of collections: CRUD, streamed document uploads, reembed, search, export, ingest error files."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from app.collections import export, search, service, upload_writer
from app.collections.schemas import (
    CollectionCreate,
    CollectionList,
    CollectionOut,
    IngestErrorList,
    JobNotifications,
    ReembedRequest,
    SearchRequest,
    SearchResponse,
)
from app.collections.upload_items import TextMode, UploadFormat, UploadFormatError, UploadOptions
from app.collections.uploads import UploadReader
from app.core.deps import SessionDep, SettingsDep
from app.core.limits import BodyTooLargeError
from app.jobs.schemas import MAX_OFFSET, JobOut
from app.keys.auth import JOB_LIMIT_ERRORS, RATE_LIMIT_ERRORS, PrincipalDep, charge_rate_limit

router = APIRouter(prefix="/collections", tags=["collections"])
errors_router = APIRouter(prefix="/jobs", tags=["collections"])

# scope="function": commit (and send the outbox) before the response goes out.

_UPLOAD_BODY = {
    "requestBody": {
        "description": "the documents: a JSON array, JSONL, CSV, Parquet or plain text, raw or as multipart files",
        "content": {
            "application/x-ndjson": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            "text/csv": {"schema": {"type": "string", "format": "binary"}},
            "text/plain": {"schema": {"type": "string", "format": "binary"}},
            "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
            },
        },
    }
}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CollectionOut)
def create_collection(
    payload: CollectionCreate, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> CollectionOut:
    """Create a collection; its model fixes the dimension of its vectors."""
    return service.create_collection(session, payload, settings, principal)


@router.get("", response_model=CollectionList)
def list_collections(
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> CollectionList:
    """List collections by name."""
    return service.list_collections(session, principal, limit=limit, offset=offset)


@router.get("/{name}", response_model=CollectionOut)
def get_collection(name: str, session: SessionDep, principal: PrincipalDep) -> CollectionOut:
    """Return a collection with its document, chunk and vector counts, versions and size."""
    return service.get_collection(session, name, principal)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_collection(name: str, session: SessionDep, principal: PrincipalDep) -> Response:
    """Delete a collection with its documents and vectors; its running jobs are cancelled."""
    service.delete_collection(session, name, principal)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{name}/documents",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    openapi_extra=_UPLOAD_BODY,
    responses=JOB_LIMIT_ERRORS,
)
async def upload_documents(
    name: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    format: Annotated[UploadFormat | None, Query(description="default: from file name or Content-Type")] = None,
    text_mode: Annotated[TextMode, Query(description="plain text: one document per file, or per line")] = TextMode.FILE,
    id_field: Annotated[str, Query(min_length=1, max_length=200)] = "id",
    text_field: Annotated[str, Query(min_length=1, max_length=200)] = "text",
    document_id: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
    webhook_url: Annotated[
        str | None, Query(max_length=2048, description="POSTed a signed event when the job ends")
    ] = None,
    progress_milestones: Annotated[
        list[int] | None,
        Query(description="percentages (1-99, repeat the parameter) at which to send a `job.progress` event"),
    ] = None,
) -> JobOut:
    """Stream documents in and return the ingest job (202); workers start before the upload ends.

    Unchanged documents (same id, same text) are not embedded again; one bad line fails that document only.
    """
    options = UploadOptions(
        format=format,
        text_mode=text_mode,
        id_field=id_field,
        text_field=text_field,
        document_id=document_id,
        max_line_bytes=settings.ingest_max_line_bytes,
    )
    notifications = _notifications(webhook_url, progress_milestones)
    reader = UploadReader(request.headers.get("content-type"), options)
    source = {"format": format.value if format else None, "content_type": request.headers.get("content-type")}
    writer = upload_writer.UploadWriter(session, name, settings, source, principal, notifications)
    await run_in_threadpool(writer.open)
    received = 0
    try:
        async for piece in request.stream():
            received += len(piece)
            for item in reader.feed(piece):
                if writer.add(item):
                    await run_in_threadpool(writer.flush)
            if writer.stale():
                await run_in_threadpool(writer.flush)
        for item in reader.close():
            if writer.add(item):
                await run_in_threadpool(writer.flush)
    except UploadFormatError as exc:
        job = await run_in_threadpool(writer.fail, exc.message)
        if job is None:
            raise
        return JobOut.of(job)
    except ClientDisconnect:
        await run_in_threadpool(writer.fail, f"the client disconnected after {received} bytes of the upload")
        raise
    except BodyTooLargeError as exc:
        # A job that already took documents keeps them, says why the rest is missing, and is named in the 413.
        job = await run_in_threadpool(writer.fail, f"{exc.detail}; the documents before byte {received} were kept")
        if job is None:
            raise
        raise HTTPException(
            413, f"{exc.detail}; job {job.id} kept the documents before it", {"Location": f"/jobs/{job.id}"}
        ) from exc
    job = await run_in_threadpool(writer.finish)
    return JobOut.of(job)


@router.post("/{name}/reembed", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut, responses=JOB_LIMIT_ERRORS)
def reembed_collection(
    name: str, payload: ReembedRequest, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> JobOut:
    """Re-embed every chunk with another model into a new vector version; search switches to it when done."""
    return JobOut.of(service.start_reembed(session, name, payload, settings, principal))


@router.post("/{name}/search", response_model=SearchResponse, responses=RATE_LIMIT_ERRORS)
async def search_collection(
    name: str, payload: SearchRequest, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> SearchResponse:
    """Return the chunks nearest a query (embedded with the collection's model), best first."""
    if payload.query is not None:  # embedding it spends model time, as the synchronous endpoints do
        await charge_rate_limit(principal, settings)
    return await search.search(session, name, payload, settings, principal)


@router.get(
    "/{name}/export",
    responses={200: {"content": {"application/x-ndjson": {}, "application/vnd.apache.parquet": {}}}},
)
def export_collection(
    name: str,
    session: SessionDep,
    principal: PrincipalDep,
    format: Annotated[str, Query(pattern="^(jsonl|parquet)$")] = "jsonl",
) -> StreamingResponse:
    """Stream every chunk: document id, chunk index, text, metadata and vector, as JSONL or Parquet."""
    collection_id, version_id, dimension = export.export_target(session, name, principal)
    if format == "parquet":
        return StreamingResponse(
            export.export_parquet(collection_id, version_id, dimension),
            media_type="application/vnd.apache.parquet",
            headers={"Content-Disposition": f'attachment; filename="{name}.parquet"'},
        )
    return StreamingResponse(
        export.export_jsonl(collection_id, version_id),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{name}.jsonl"'},
    )


@errors_router.get("/{job_id}/errors", response_model=IngestErrorList)
def ingest_job_errors(
    job_id: uuid.UUID,
    session: SessionDep,
    principal: PrincipalDep,
    after: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="the last error id of the previous page")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> IngestErrorList:
    """Return an ingest or reembed job's error file: which document failed and why, in upload order."""
    return service.ingest_errors(session, job_id, principal, after=after, limit=limit)


def _notifications(webhook_url: str | None, milestones: list[int] | None) -> JobNotifications:
    """Validate the upload's notification query parameters as the JSON routes validate theirs (422)."""
    try:
        return JobNotifications(webhook_url=webhook_url, progress_milestones=milestones)
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
        raise RequestValidationError(errors) from exc
