"""The upload writer: a streamed upload goes to Postgres batch by batch, each batch committed, then sent.

Uploads are the one place where a request commits more than once: a multi-GB upload cannot be one
transaction, and workers should start on the first documents while the rest still streams in. So
``UploadWriter`` commits each batch of documents (and sends its task) as soon as it is complete.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

from sqlalchemy.orm import Session

from app.collections.repository import CollectionRepository, DocumentInput
from app.collections.schemas import JobNotifications
from app.collections.service import require_collection
from app.collections.settling import record_errors, report_progress, settle
from app.collections.upload_items import Item, ParsedDocument, RejectedLine
from app.core.config import Settings
from app.core.db import enqueue
from app.core.errors import ConflictError, InvalidRequestError
from app.core.queues import TaskName
from app.core.security import Principal
from app.jobs import lifecycle
from app.jobs.fairness import batch_priorities
from app.jobs.repository import JobRepository
from app.keys.service import admit_job
from app.models.collection import Collection
from app.models.job import Job, JobKind, JobStatus
from app.observability.tracing import annotate


def content_hash(text: str) -> str:
    """Return the hex SHA-256 of a document's text: unchanged text, nothing to embed."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class UploadWriter:
    """Writes a streamed upload to Postgres batch by batch; each batch is committed, then sent to the bulk queue.

    The job is created with the first batch (an upload that holds nothing is a 422, not a job), stays
    open (``input_complete`` false) while the body streams, and is settled by ``finish``.
    """

    def __init__(
        self,
        session: Session,
        name: str,
        settings: Settings,
        source: dict[str, Any],
        principal: Principal,
        notifications: JobNotifications | None = None,
    ) -> None:
        self.session = session
        self.notifications = notifications or JobNotifications()
        self.principal = principal
        self.repo = CollectionRepository(session)
        self.jobs = JobRepository(session)
        self.name = name
        self.settings = settings
        self.source = source
        self.documents: dict[str, ParsedDocument] = {}
        self.rejected: list[RejectedLine] = []
        self.chars = 0
        self.job_id: uuid.UUID | None = None
        self._collection_id = 0
        self._tenant = principal.tenant
        self.seq = 0
        self.flushed_at = time.monotonic()

    @property
    def started(self) -> bool:
        return self.job_id is not None

    def open(self) -> None:
        """Refuse early: an unknown collection (404), or one being re-embedded (409)."""
        collection = require_collection(self.repo, self.name, self.principal)
        self._refuse_if_reembedding(collection)
        self.session.commit()  # end the read transaction: nothing is held while the body streams

    def add(self, item: Item) -> bool:
        """Buffer one parsed item; return True when the batch is full (documents or characters)."""
        if isinstance(item, RejectedLine):
            self.rejected.append(item)
        else:
            earlier = self.documents.pop(item.external_id, None)
            if earlier is not None:
                self.rejected.append(
                    RejectedLine(
                        earlier.line,
                        earlier.external_id,
                        f"document id {earlier.external_id!r} appears again at line {item.line} of the upload; "
                        "the later one was kept",
                    )
                )
            self.documents[item.external_id] = item
            self.chars += len(item.text)
        full = len(self.documents) + len(self.rejected) >= self.settings.ingest_batch_documents
        return full or self.chars >= self.settings.ingest_batch_chars

    def stale(self) -> bool:
        """Return True when the last flush is EMBEDQ_INGEST_FLUSH_S old: a slow upload still feeds its job."""
        return time.monotonic() - self.flushed_at >= self.settings.ingest_flush_s

    def flush(self) -> None:
        """Commit the buffered documents as one batch and send its task; with nothing buffered, a heartbeat."""
        self.flushed_at = time.monotonic()
        if not self.documents and not self.rejected:
            if self.job_id is not None:
                self._lock_open_job()
                self.jobs.add_counts(self.job_id)
                self.session.commit()
            return
        job_id = self._lock_open_job() if self.job_id is not None else self._create_job()
        inputs = [
            DocumentInput(d.external_id, d.text, d.metadata, content_hash(d.text)) for d in self.documents.values()
        ]
        pending = self.repo.upsert_documents(self._collection_id, inputs) if inputs else []
        if pending:
            self.repo.add_batch(job_id, self.seq, [d.id for d in pending], [d.content_hash for d in pending])
            [priority] = batch_priorities(self.session, self._tenant, self.settings, 1)
            enqueue(self.session, TaskName.INGEST_BATCH, str(job_id), self.seq, priority=priority)
            self.seq += 1
        errors = [(r.document_id, r.line, r.error) for r in self.rejected]
        record_errors(self.session, job_id, errors, self.settings)
        unchanged = len(inputs) - len(pending)
        self.jobs.add_counts(
            job_id, total=len(inputs) + len(errors), done=unchanged, skipped=unchanged, failed=len(errors)
        )
        self.session.commit()
        self.documents.clear()
        self.rejected.clear()
        self.chars = 0

    def finish(self) -> Job:
        """Write what is left, mark the upload complete and settle the job; 422 if there were no documents."""
        self.flush()
        if self.job_id is None:
            raise InvalidRequestError(
                "the upload holds no documents: send JSONL lines, CSV rows or text with at least one document"
            )
        return self._close(None)

    def fail(self, reason: str) -> Job | None:
        """End an upload that broke midway: keep what arrived, record why the rest did not.

        Returns None if nothing was committed yet (the caller answers with an error instead of a job).
        """
        self.session.rollback()
        if self.job_id is None:
            return None
        self.flush()
        self._lock_open_job()
        record_errors(self.session, self.job_id, [(None, None, reason)], self.settings)
        return self._close(reason)

    def _close(self, reason: str | None) -> Job:
        assert self.job_id is not None
        self._lock_open_job()
        # Milestones count once the total is known: the batches done while the body streamed may have passed some.
        report_progress(self.session, self.job_id, self.jobs.close_input(self.job_id, reason))
        settle(self.session, self.job_id, self.settings)
        self.session.commit()
        job = self.jobs.get(self.job_id)
        assert job is not None
        self.session.refresh(job)
        return job

    def _create_job(self) -> uuid.UUID:
        collection = require_collection(self.repo, self.name, self.principal, lock=True)
        self._refuse_if_reembedding(collection)
        admit_job(self.session, self.principal, self.settings)
        version = self.repo.active_version(collection.id)
        job = lifecycle.create(
            self.session,
            self.principal,
            JobKind.INGEST,
            tenant=collection.tenant,
            running=True,
            model=version.model,
            params={
                "collection": self.name,
                "collection_id": collection.id,
                "version_id": version.id,
                **self.source,
                **self.notifications.params(),
            },
            webhook_url=str(self.notifications.webhook_url) if self.notifications.webhook_url else None,
            total=0,
            input_complete=False,
        )
        annotate(job_id=str(job.id), kind=job.kind, model=job.model, tenant=job.tenant)
        self.job_id = job.id
        self._collection_id = collection.id
        self._tenant = collection.tenant
        return job.id

    def _lock_open_job(self) -> uuid.UUID:
        # The job's row first, then documents: the order workers lock in too, so the two never deadlock.
        assert self.job_id is not None
        job = self.jobs.lock(self.job_id)
        if job is None or job.status != JobStatus.RUNNING.value or job.input_complete:
            state = job.status if job is not None else "deleted"
            raise ConflictError(f"ingest job {self.job_id} is no longer taking documents ({state}): upload again")
        return self.job_id

    def _refuse_if_reembedding(self, collection: Collection) -> None:
        busy = self.jobs.active_for_collection(collection.id, [JobKind.REEMBED.value])
        if busy:
            raise ConflictError(
                f"collection {collection.name!r} is being re-embedded by job {busy[0].id}: upload when it has "
                "finished, or cancel it"
            )
