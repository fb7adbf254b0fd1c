"""Collections on the API side: create, read, delete, start a reembed, list an ingest job's errors.

Uploads are ``upload_writer``'s, search ``search``'s, export ``export``'s; the worker's side is ``ingestion``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from app.catalog.access import JOB_API_ERRORS, check_embedding_model
from app.catalog.dimension import model_dimension
from app.collections.repository import CollectionRepository
from app.collections.schemas import (
    ChunkingSpec,
    CollectionCounts,
    CollectionCreate,
    CollectionLinks,
    CollectionList,
    CollectionOut,
    IngestErrorList,
    IngestErrorOut,
    ReembedRequest,
    VersionOut,
)
from app.collections.settling import cancel_jobs, settle
from app.collections.vector_store import VectorStore
from app.core.config import Settings
from app.core.db import enqueue
from app.core.errors import ConflictError, NotFoundError
from app.core.queues import TaskName
from app.core.security import Principal
from app.jobs import lifecycle
from app.jobs.fairness import batch_priorities
from app.jobs.repository import JobRepository
from app.keys.service import admit_job
from app.models.collection import Collection, CollectionVersion, IndexStatus, VectorStorage, VersionStatus
from app.models.job import Job, JobKind

_BUSY_KINDS = (JobKind.INGEST.value, JobKind.REEMBED.value)


# Collections.


def create_collection(
    session: Session, payload: CollectionCreate, settings: Settings, principal: Principal
) -> CollectionOut:
    """Create a collection of the caller's tenant and its first (active, empty) vector version; 409 if the
    tenant has one by that name already."""
    repo = CollectionRepository(session)
    if repo.get_in_tenant(principal.tenant, payload.name) is not None:
        raise ConflictError(f"a collection named {payload.name!r} exists: pick another name or delete it first")
    model = payload.model or settings.default_model
    check_embedding_model(model, settings, principal, JOB_API_ERRORS, session)
    chunking = payload.chunking or ChunkingSpec(
        max_tokens=settings.ingest_default_max_tokens, overlap_tokens=settings.ingest_default_overlap_tokens
    )
    collection = Collection(
        tenant=principal.tenant,
        name=payload.name,
        max_tokens=chunking.max_tokens,
        overlap_tokens=chunking.overlap_tokens,
        meta=payload.metadata,
    )
    repo.add(collection)
    dimension = model_dimension(model, settings, session)
    version = CollectionVersion(
        collection_id=collection.id,
        number=1,
        model=model,
        dimension=dimension,
        storage=payload.storage.value,
        status=VersionStatus.ACTIVE.value,
        index_status=IndexStatus.NONE.value,
        activated_at=datetime.now(UTC),
    )
    repo.add_version(version)
    if dimension is not None:
        VectorStore(session).create_vector_table(version.id, dimension, version.storage, fresh=True)
    return _view(collection, [version], None, None)


def list_collections(session: Session, principal: Principal, *, limit: int, offset: int) -> CollectionList:
    repo = CollectionRepository(session)
    page = repo.list_page(principal, limit=limit + 1, offset=offset)
    versions = repo.active_versions([c.id for c in page[:limit]])
    data = [_view(c, [versions[c.id]], None, None) for c in page[:limit] if c.id in versions]
    return CollectionList(data=data, next_offset=offset + limit if len(page) > limit else None)


def get_collection(session: Session, name: str, principal: Principal) -> CollectionOut:
    """Return a collection with its counts, versions and the size of its active vectors."""
    repo = CollectionRepository(session)
    collection = require_collection(repo, name, principal)
    versions = repo.versions(collection.id)
    documents = repo.document_counts(collection.id)
    vectors, size = VectorStore(session).vectors_and_bytes(repo.active_version(collection.id).id)
    counts = CollectionCounts(
        documents=documents.documents,
        pending=documents.pending,
        ready=documents.ready,
        failed=documents.failed,
        chunks=documents.chunks,
        vectors=vectors,
    )
    return _view(collection, versions, counts, size)


def delete_collection(session: Session, name: str, principal: Principal) -> None:
    """Delete a collection, its documents and every vector version; its running jobs are cancelled."""
    repo = CollectionRepository(session)
    collection = require_collection(repo, name, principal, lock=True)
    jobs = JobRepository(session).active_for_collection(collection.id, _BUSY_KINDS)
    cancel_jobs(session, jobs, f"collection {name!r} was deleted")
    for version in repo.versions(collection.id):
        VectorStore(session).drop_vector_table(version.id)
    repo.delete(collection)


def require_collection(
    repo: CollectionRepository, name: str, principal: Principal, *, lock: bool = False
) -> Collection:
    """Return the caller's collection ``name``; another tenant's is a 404, as if it did not exist.

    An admin gets their own tenant's first, else the only one by that name, and a 409 if several tenants
    have one (an admin acts on another tenant's collection only when the name says which).
    """
    found = repo.named(name, principal, lock=lock)
    if not found:
        raise NotFoundError(f"no collection named {name!r}: create it with POST /collections", param="name")
    if len(found) > 1 and found[0].tenant != principal.tenant:
        tenants = ", ".join(sorted(c.tenant for c in found))
        raise ConflictError(
            f"tenants {tenants} each have a collection named {name!r}: use a key of the tenant you mean",
            param="name",
        )
    return found[0]


def _view(
    collection: Collection, versions: list[CollectionVersion], counts: CollectionCounts | None, size: int | None
) -> CollectionOut:
    active = next(v for v in versions if v.status == VersionStatus.ACTIVE.value)
    base = f"/collections/{collection.name}"
    return CollectionOut(
        name=collection.name,
        model=active.model,
        dimension=active.dimension,
        storage=VectorStorage(active.storage),
        chunking=ChunkingSpec(max_tokens=collection.max_tokens, overlap_tokens=collection.overlap_tokens),
        metadata=collection.meta,
        counts=counts,
        size_bytes=size,
        versions=[
            VersionOut(
                number=v.number,
                model=v.model,
                dimension=v.dimension,
                storage=VectorStorage(v.storage),
                status=v.status,
                index_status=v.index_status,
                created_at=v.created_at,
                activated_at=v.activated_at,
            )
            for v in versions
        ],
        created_at=collection.created_at,
        links=CollectionLinks(
            self=base,
            documents=f"{base}/documents",
            search=f"{base}/search",
            export=f"{base}/export",
            reembed=f"{base}/reembed",
        ),
    )


# Reembed.


def start_reembed(
    session: Session, name: str, payload: ReembedRequest, settings: Settings, principal: Principal
) -> Job:
    """Queue a job that embeds every chunk with ``payload.model`` into a new version, switched to when done."""
    repo = CollectionRepository(session)
    collection = require_collection(repo, name, principal, lock=True)
    model = payload.model
    check_embedding_model(model, settings, principal, JOB_API_ERRORS, session)
    jobs = JobRepository(session)
    busy = jobs.active_for_collection(collection.id, _BUSY_KINDS)
    if busy:
        raise ConflictError(
            f"collection {name!r} has a running {busy[0].kind} job {busy[0].id}: reembed when it has finished"
        )
    admit_job(session, principal, settings)
    for old in repo.versions(collection.id):
        if old.status in (VersionStatus.BUILDING.value, VersionStatus.FAILED.value):
            repo.set_version_status(old.id, VersionStatus.FAILED)
            VectorStore(session).drop_vector_table(old.id)
    dimension = model_dimension(model, settings, session)
    # The new version keeps the active one's storage unless the request names another.
    storage = payload.storage.value if payload.storage else repo.active_version(collection.id).storage
    version = CollectionVersion(
        collection_id=collection.id,
        number=repo.next_version_number(collection.id),
        model=model,
        dimension=dimension,
        storage=storage,
        status=VersionStatus.BUILDING.value,
        index_status=IndexStatus.NONE.value,
    )
    repo.add_version(version)
    if dimension is not None:
        VectorStore(session).create_vector_table(version.id, dimension, storage, fresh=True)
    job = lifecycle.create(
        session,
        principal,
        JobKind.REEMBED,
        tenant=collection.tenant,
        running=True,
        model=model,
        params={"collection": name, "collection_id": collection.id, "version_id": version.id, **payload.params()},
        webhook_url=str(payload.webhook_url) if payload.webhook_url else None,
        total=0,
        input_complete=True,
    )
    version.job_id = job.id
    batches, documents = repo.add_reembed_batches(job.id, collection.id, settings.ingest_batch_documents)
    jobs.add_counts(job.id, total=documents)
    for seq, priority in enumerate(batch_priorities(session, collection.tenant, settings, batches, counted=True)):
        enqueue(session, TaskName.INGEST_REEMBED, str(job.id), seq, priority=priority)
    if documents == 0:
        settle(session, job.id, settings)
    session.refresh(job)
    return job


# Errors.


def ingest_errors(
    session: Session, job_id: uuid.UUID, principal: Principal, *, after: int, limit: int
) -> IngestErrorList:
    job = JobRepository(session).get_visible(job_id, principal)
    if job is None or job.kind not in _BUSY_KINDS:
        raise NotFoundError(f"no ingest or reembed job with id {job_id}", param="job_id")
    rows = CollectionRepository(session).errors_page(job_id, after=after, limit=limit + 1)
    data = [IngestErrorOut(id=r.id, document_id=r.document_id, line=r.line, error=r.error) for r in rows[:limit]]
    return IngestErrorList(job_id=job_id, data=data, next_after=data[-1].id if len(rows) > limit else None)
