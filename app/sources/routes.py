"""HTTP route of sources: POST /collections/{name}/sources."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.core.deps import SessionDep, SettingsDep
from app.jobs.schemas import JobOut
from app.keys.auth import JOB_LIMIT_ERRORS, PrincipalDep
from app.sources import service
from app.sources.schemas import SourceRequest

router = APIRouter(prefix="/collections", tags=["collections"])


@router.post("/{name}/sources", status_code=status.HTTP_202_ACCEPTED, response_model=JobOut, responses=JOB_LIMIT_ERRORS)
def sync_source(
    name: str, payload: SourceRequest, session: SessionDep, settings: SettingsDep, principal: PrincipalDep
) -> JobOut:
    """Ingest every document of an S3 (or allowed local) source and return the ingest job (202).

    Workers list the objects, split them into shards (Parquet row groups, byte ranges of JSONL and CSV
    files, small files whole) and read and embed them in parallel. Posting the same source again reads
    only objects whose ETag, size or mtime changed, and embeds only documents whose text changed.
    """
    return JobOut.of(service.start_source(session, name, payload, settings, principal))
