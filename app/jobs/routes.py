"""HTTP routes of asynchronous jobs."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.core.deps import SessionDep, SettingsDep
from app.jobs import service
from app.jobs.schemas import MAX_OFFSET, EmbeddingJobCreate, EncodingFormat, JobList, JobOut, JobResults
from app.keys.auth import JOB_LIMIT_ERRORS, PrincipalDep
from app.models.job import JobKind, JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])

# scope="function": commit (and send the outbox) before the response goes out, so a client can poll at once.


@router.post(
    "/embeddings",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "an earlier job with the same idempotency_key"},
        **JOB_LIMIT_ERRORS,
    },
)
def create_embedding_job(
    payload: EmbeddingJobCreate, session: SessionDep, settings: SettingsDep, principal: PrincipalDep, response: Response
) -> JobOut:
    """Queue an embedding job; poll `links.self` until `status` is `succeeded`, then read `links.results`."""
    job, created = service.create_embedding_job(session, payload, settings, principal)
    if not created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobOut.of(job)


@router.get("", response_model=JobList)
def list_jobs(
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    kind: JobKind | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobList:
    """List your tenant's jobs (every tenant's for an admin key), newest first, optionally by status and kind."""
    jobs, next_offset = service.list_jobs(
        session, principal, status=status_, kind=kind, limit=min(limit, settings.jobs_page_max), offset=offset
    )
    return JobList(data=[JobOut.of(j) for j in jobs], next_offset=next_offset)


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> JobOut:
    """Return a job's status, progress (0-100), counts, timestamps and error."""
    return JobOut.of(service.get_job(session, job_id, principal))


@router.get("/{job_id}/results", response_model=JobResults)
def get_job_results(
    job_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    encoding_format: EncodingFormat = EncodingFormat.FLOAT,
) -> JobResults:
    """Return one page of vectors in input order (`embedding` is null for inputs not embedded yet)."""
    return service.job_results(
        session,
        job_id,
        principal,
        offset=offset,
        limit=min(limit, settings.results_page_max),
        encoding_format=encoding_format,
    )


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel_job(job_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> JobOut:
    """Cancel a queued or running job: queued batches are skipped, running ones stop after their batch."""
    return JobOut.of(service.cancel_job(session, job_id, principal))
