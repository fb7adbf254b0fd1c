"""Planning a source job (the ``ingest.plan`` task): list the objects, skip the unchanged, cut the rest into shards.

Listing runs in a worker, not in the API request: a bucket may hold thousands of objects. The plan is
written in one transaction with the job's row locked, and its shard tasks are sent after it commits; a
plan delivered twice finds the job planned and does nothing.
"""

from __future__ import annotations

import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import fsspec
from sqlalchemy.orm import Session

from app.collections.repository import CollectionRepository
from app.collections.settling import record_errors, settle
from app.collections.vector_store import VectorStore
from app.core.config import Settings
from app.core.db import Scope, enqueue
from app.core.queues import TaskName
from app.jobs.repository import JobRepository
from app.models.job import Job, JobStatus
from app.sources.listing import ListedObject, list_objects, store_failure
from app.sources.locations import (
    SourceError,
    SourceForbiddenError,
    SourceLocation,
    SourceUnavailableError,
    filesystem,
    parse_location,
)
from app.sources.reading import ShardPlan, plan_object
from app.sources.repository import NewShard, SourceRepository
from app.sources.spec import SourceSpec
from app.sources.store_faults import StoreOutageError, retry_delay_s

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Plan:
    listed: list[ListedObject]
    shards: list[NewShard]
    unchanged: int
    broken: list[str]  # why objects could not be planned (an unreadable Parquet footer, ...)


def _source_job(session: Session, job_id: uuid.UUID) -> Job | None:
    job = JobRepository(session).get(job_id)
    if job is None or job.status != JobStatus.RUNNING.value or job.params.get("planned"):
        return None
    return job


def plan_source(scope: Scope, job_id: uuid.UUID, settings: Settings, attempt: int = 1) -> int:
    """Plan a source job's shards and send their tasks; return how many (0 if it was planned before).

    A store that does not answer raises StoreOutageError while listings are left (``attempt`` is this one's
    number, up to EMBEDQ_SOURCE_SHARD_MAX_ATTEMPTS), for the task to list again later; then fails the job.
    """
    with scope() as session:
        job = _source_job(session, job_id)
        if job is None:
            return 0
        spec = SourceSpec.of(job.params["source"])
        collection_id = int(job.params["collection_id"])
        # An object whose documents did not all embed (a model error, say) is read again, changed or not.
        not_ready = CollectionRepository(session).objects_not_ready(collection_id)
        synced = {u: s for u, s in SourceRepository(session).synced(collection_id).items() if u not in not_ready}
    try:
        location = parse_location(spec.uri)
        fs = filesystem(location, spec.credentials, settings)
        listed = list_objects(fs, location, spec.format, settings)
        plan = _plan(fs, location, listed, synced, settings)
    except SourceUnavailableError as exc:
        limit = settings.source_shard_max_attempts
        if attempt < limit:
            delay = retry_delay_s(attempt, settings)
            raise StoreOutageError(f"{exc.message}: listing {attempt} of {limit}, again in {delay:g} s", delay) from exc
        return _fail(scope, job_id, f"{exc.message}; the store did not answer {limit} listings", settings)
    except (SourceError, SourceForbiddenError) as exc:  # forbidden: a name that resolves elsewhere since the check
        return _fail(scope, job_id, exc.message, settings)
    with scope() as session:
        if JobRepository(session).lock(job_id) is None or _source_job(session, job_id) is None:
            return 0
        return _write_plan(session, job_id, collection_id, spec, plan, settings)


def _plan(
    fs: fsspec.AbstractFileSystem, location: SourceLocation, listed: list[ListedObject],
    synced: dict[str, dict[str, Any]], settings: Settings,
) -> _Plan:  # fmt: skip
    changed = [obj for obj in listed if synced.get(obj.uri) != obj.signature()]
    # A Parquet object's shards need its footer: a round trip to the store each, so they are read together.
    with ThreadPoolExecutor(max_workers=settings.source_plan_threads, thread_name_prefix="source-plan") as pool:
        planned = list(pool.map(lambda obj: _plan_object(fs, location, obj, settings), changed))
    shards: list[NewShard] = []
    broken: list[str] = []
    for obj, pieces in zip(changed, planned, strict=True):
        if isinstance(pieces, str):
            broken.append(pieces)
            continue
        shards += [NewShard(obj.uri, obj.format.value, p.kind.value, p.start, p.stop, obj.signature()) for p in pieces]
    return _Plan(listed, shards, len(listed) - len(changed), broken)


def _plan_object(
    fs: fsspec.AbstractFileSystem, location: SourceLocation, obj: ListedObject, settings: Settings
) -> list[ShardPlan] | str:
    """Return an object's shards, or why it cannot be read: an unreadable object fails its documents, not the job.

    A store that does not answer raises SourceUnavailableError: the whole plan is listed again later.
    """
    try:
        return plan_object(fs, obj, settings)
    except Exception as exc:  # the store's or pyarrow's error, shown masked
        failure = store_failure(location, exc, settings, obj.uri)
        if isinstance(failure, SourceUnavailableError):
            raise failure from exc
        return failure.message


def _write_plan(
    session: Session, job_id: uuid.UUID, collection_id: int, spec: SourceSpec, plan: _Plan, settings: Settings
) -> int:
    jobs = JobRepository(session)
    sources = SourceRepository(session)
    removed = _delete_missing(session, collection_id, spec, plan.listed) if spec.delete_missing else 0
    seqs = sources.add_shards(job_id, plan.shards)
    for seq in seqs:
        enqueue(session, TaskName.INGEST_SHARD, str(job_id), seq)
    record_errors(session, job_id, [(None, None, reason) for reason in plan.broken], settings)
    job = jobs.get(job_id)
    assert job is not None
    objects = len({s.object_uri for s in plan.shards})
    jobs.set_params(
        job_id,
        {**job.params, "planned": True, "objects": len(plan.listed), "objects_unchanged": plan.unchanged,
         "deleted_documents": removed},
    )  # fmt: skip
    jobs.add_counts(job_id, total=len(plan.broken), failed=len(plan.broken), shards_total=len(seqs))
    jobs.set_message(
        job_id,
        f"reading {len(seqs)} shards of {objects} objects ({plan.unchanged} unchanged since the last sync"
        + (f", {removed} documents of vanished objects removed)" if spec.delete_missing else ")"),
    )
    if not seqs:
        jobs.close_input(job_id, None)
        settle(session, job_id, settings)
    log.info("source job %s: %d objects listed, %d unchanged, %d shards", job_id, len(plan.listed), plan.unchanged,
             len(seqs))  # fmt: skip
    return len(seqs)


def _delete_missing(session: Session, collection_id: int, spec: SourceSpec, listed: list[ListedObject]) -> int:
    """Delete the documents of objects this source synced before and no longer lists; return how many."""
    sources = SourceRepository(session)
    present = {o.uri for o in listed}
    gone = [uri for uri in sources.objects_of_source(collection_id, spec.uri) if uri not in present]
    if not gone:
        return 0
    repo = CollectionRepository(session)
    ids = repo.source_documents(collection_id, gone)
    VectorStore(session).delete_chunks([v.id for v in repo.versions(collection_id)], ids)
    repo.delete_documents(ids)
    sources.forget(collection_id, gone)
    return len(ids)


def _fail(scope: Scope, job_id: uuid.UUID, reason: str, settings: Settings) -> int:
    """End a job whose source cannot be listed any more (it could when the API checked it)."""
    with scope() as session:
        if JobRepository(session).lock(job_id) is None or _source_job(session, job_id) is None:
            return 0
        record_errors(session, job_id, [(None, None, reason)], settings)
        JobRepository(session).close_input(job_id, reason)
        settle(session, job_id, settings)
    return 0
