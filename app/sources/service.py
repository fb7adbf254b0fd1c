"""Starting a source job: the cheap checks that make a bad source a clear 4xx, then the job and its plan task.

The API lists the source once (bounded by EMBEDQ_SOURCE_TIMEOUT_S and EMBEDQ_SOURCE_MAX_OBJECTS) so that a
scheme, root, bucket, glob or Parquet schema that cannot work is refused before any job exists; the
worker's ``ingest.plan`` lists it again and does the rest.
"""

from __future__ import annotations

import fsspec
import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from app.collections.repository import CollectionRepository
from app.collections.service import require_collection
from app.collections.upload_parquet import missing_columns
from app.core.config import Settings
from app.core.db import enqueue
from app.core.errors import ConflictError
from app.core.queues import TaskName
from app.core.security import Principal
from app.jobs import lifecycle
from app.jobs.repository import JobRepository
from app.keys.service import admit_job
from app.models.job import Job, JobKind
from app.sources.listing import ListedObject, list_objects, store_failure
from app.sources.locations import SourceError, SourceLocation, check_allowed, filesystem, parse_location
from app.sources.schemas import SourceRequest
from app.sources.spec import SourceFormat, SourceSpec

LISTING = "listing the source's objects"


def start_source(session: Session, name: str, payload: SourceRequest, settings: Settings, principal: Principal) -> Job:
    """Check the source, then create its ingest job (running, input open) and send its plan task."""
    repo = CollectionRepository(session)
    collection = require_collection(repo, name, principal)
    spec = payload.spec()
    check_source(spec, settings)
    collection = require_collection(repo, name, principal, lock=True)
    busy = JobRepository(session).active_for_collection(collection.id, [JobKind.REEMBED.value])
    if busy:
        raise ConflictError(
            f"collection {name!r} is being re-embedded by job {busy[0].id}: sync when it has finished, or cancel it"
        )
    admit_job(session, principal, settings)
    version = repo.active_version(collection.id)
    job = lifecycle.create(
        session,
        principal,
        JobKind.INGEST,
        tenant=collection.tenant,
        running=True,
        model=version.model,
        params={
            "collection": name,
            "collection_id": collection.id,
            "version_id": version.id,
            "source": spec.params(),
            **payload.params(),
        },
        webhook_url=str(payload.webhook_url) if payload.webhook_url else None,
        total=0,
        input_complete=False,
        message=LISTING,
    )
    enqueue(session, TaskName.INGEST_PLAN, str(job.id))
    return job


def check_source(spec: SourceSpec, settings: Settings) -> list[ListedObject]:
    """Return the source's objects, or refuse it: unknown scheme or credential set, a root not allowed (403),
    a store that does not answer, nothing matching, a Parquet file without the named columns (422)."""
    location = parse_location(spec.uri)
    check_allowed(location, settings)
    fs = filesystem(location, spec.credentials, settings)
    objects = list_objects(fs, location, spec.format, settings)
    if not objects:
        known = "" if spec.format else " with a known extension (.parquet, .jsonl, .ndjson, .csv, .txt, .md)"
        raise SourceError(
            f"no object{known} matches {spec.uri}: check the prefix or glob, or pass a format", param="uri"
        )
    first_parquet = next((o for o in objects if o.format is SourceFormat.PARQUET), None)
    if first_parquet is not None:
        _check_parquet_columns(fs, location, first_parquet, spec, settings)
    return objects


def _check_parquet_columns(
    fs: fsspec.AbstractFileSystem, location: SourceLocation, obj: ListedObject, spec: SourceSpec, settings: Settings
) -> None:
    try:
        with fs.open(obj.path, "rb") as handle:
            schema = pq.ParquetFile(handle).schema_arrow
    except Exception as exc:  # the store's or pyarrow's error, shown masked
        raise store_failure(location, exc, settings, obj.uri) from exc
    missing = missing_columns(schema, spec.id_field, spec.text_field, spec.metadata_fields)
    if missing:
        raise SourceError(
            f"{obj.uri} has no {' and no '.join(missing)} column (it has {', '.join(schema.names)}): name the "
            'columns with "id_field", "text_field" and "metadata_fields"',
            param="id_field" if spec.id_field in missing else "text_field" if spec.text_field in missing else None,
        )
