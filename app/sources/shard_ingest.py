"""Reading one shard of a source job (the ``ingest.shard`` task) into documents and ingest batches.

Two short transactions around the read, as for ingest batches: the first counts the delivery and reads
what the shard is; the second locks the job, claims the shard (pending -> done, so a redelivered or reaped
shard writes nothing twice), upserts its documents (unchanged text stays embedded: the content hashes and
``ON CONFLICT`` rules of uploads), sends their ``ingest.batch`` tasks, counts, and closes the job's input
when this was its last shard. Embedding is the batches' work, so it spreads over every bulk worker too.
A store that does not answer ends the delivery before the second transaction (StoreOutageError): the task
reads the whole shard again later, up to EMBEDQ_SOURCE_SHARD_MAX_ATTEMPTS reads (``app.sources.store_faults``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.collections.repository import CollectionRepository, DocumentInput
from app.collections.settling import record_errors, report_progress, settle
from app.collections.upload_items import Item, ParsedDocument, RejectedLine
from app.collections.upload_writer import content_hash
from app.core.config import Settings
from app.core.db import Scope, enqueue
from app.core.queues import TaskName
from app.core.redaction import without_secrets
from app.jobs.fairness import batch_priorities
from app.jobs.repository import JobRepository
from app.models.job import JobStatus
from app.models.source import IngestShard, ShardKind, ShardState
from app.sources.locations import SourceError, filesystem, parse_location
from app.sources.reading import ShardPlan, ShardRead, read_shard
from app.sources.repository import SourceRepository
from app.sources.spec import SourceFormat, SourceSpec
from app.sources.store_faults import StoreOutageError, retry_delay_s

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardOutcome:
    """What one delivery of a shard did: documents written (new or changed), unchanged, failed."""

    written: int
    unchanged: int
    failed: int
    finished_status: JobStatus | None = None


NOTHING_READ = ShardOutcome(0, 0, 0)


@dataclass(frozen=True)
class _Shard:
    collection_id: int
    spec: SourceSpec
    object_uri: str
    format: SourceFormat
    plan: ShardPlan
    signature: dict[str, Any]
    attempts: int  # deliveries started, this one included


def run_shard(scope: Scope, job_id: uuid.UUID, seq: int, settings: Settings) -> ShardOutcome:
    """Return what reading shard ``seq`` of a source job did; a redelivered shard changes nothing."""
    with scope() as session:
        shard = _start(session, job_id, seq)
    if shard is None:
        return NOTHING_READ
    read = _given_up(shard, settings) or _read(shard, settings)
    if read.unavailable:
        read = _outage(shard, read, settings)  # raises while reads are left: nothing is written
    with scope() as session:
        jobs = JobRepository(session)
        job = jobs.lock(job_id)
        if job is None or job.status != JobStatus.RUNNING.value:
            return NOTHING_READ
        documents, rejected = _documents(read.items)
        state = ShardState.FAILED if read.error else ShardState.DONE
        if not SourceRepository(session).claim_shard(job_id, seq, state, len(documents), read.error):
            return NOTHING_READ
        pending = _write(session, job_id, shard, documents, settings)
        errors = [(r.document_id, r.line, r.error) for r in rejected]
        if read.error:
            errors.append((None, None, without_secrets(read.error, settings)))
        record_errors(session, job_id, errors, settings)
        unchanged = len(documents) - pending
        counts = jobs.add_counts(
            job_id,
            total=len(documents) + len(errors),
            done=unchanged,
            skipped=unchanged,
            failed=len(errors),
            shards_done=0 if read.error else 1,
            shards_failed=1 if read.error else 0,
        )
        _record_object(session, job_id, shard)
        if not SourceRepository(session).pending_shards(job_id):
            counts = jobs.close_input(job_id, None)
        report_progress(session, job_id, counts)
        status = settle(session, job_id, settings)
    return ShardOutcome(pending, unchanged, len(errors), status)


def _start(session: Session, job_id: uuid.UUID, seq: int) -> _Shard | None:
    job = JobRepository(session).get(job_id)
    if job is None or job.status != JobStatus.RUNNING.value:
        return None
    row: IngestShard | None = SourceRepository(session).start_shard(job_id, seq)
    if row is None:
        return None
    return _Shard(
        collection_id=int(job.params["collection_id"]),
        spec=SourceSpec.of(job.params["source"]),
        object_uri=row.object_uri,
        format=SourceFormat(row.format),
        plan=ShardPlan(ShardKind(row.kind), row.start, row.stop),
        signature=dict(row.signature),
        attempts=row.attempts,
    )


def _given_up(shard: _Shard, settings: Settings) -> ShardRead | None:
    """Fail, unread, a shard whose earlier deliveries all died mid-read (the worker killed, out of memory, ...).

    A lost worker's message comes back to the queue (task_reject_on_worker_lost), and the broker counts nothing:
    without this, a shard that kills every worker reading it would be delivered, and kill, forever.
    """
    limit = settings.source_shard_max_attempts
    if shard.attempts <= limit:
        return None
    return ShardRead(
        [],
        f"{shard.object_uri}: {shard.plan.describe()} was started {limit} times and never finished: the worker reading "
        "it died each time (out of memory? EMBEDQ_SOURCE_SHARD_TARGET_BYTES cuts smaller shards); it was not read",
    )


def _outage(shard: _Shard, read: ShardRead, settings: Settings) -> ShardRead:
    """Send the shard back to be read again later (StoreOutageError) while reads are left; else record the error."""
    limit = settings.source_shard_max_attempts
    error = without_secrets(read.error or "", settings)
    if shard.attempts < limit:
        delay = retry_delay_s(shard.attempts, settings)
        raise StoreOutageError(f"{error}: read {shard.attempts} of {limit}, read again in {delay:g} s", delay)
    return dataclasses.replace(read, error=f"{error}; the store did not answer {limit} reads")


def _read(shard: _Shard, settings: Settings) -> ShardRead:
    try:
        location = parse_location(shard.spec.uri)
        fs = filesystem(location, shard.spec.credentials, settings)
    except SourceError as exc:
        return ShardRead([], f"{shard.object_uri}: {exc.message}")
    path = location.fs_path(shard.object_uri)
    read = read_shard(
        fs, path, shard.object_uri, shard.format, shard.plan, shard.spec, location.relative(path), settings,
        planned=shard.signature,
    )  # fmt: skip
    if read.error:
        log.warning("shard of %s broke off: %s", shard.object_uri, without_secrets(read.error, settings))
    return read


def _documents(items: Sequence[Item]) -> tuple[list[ParsedDocument], list[RejectedLine]]:
    """Split a shard's items; of a document id seen twice in it the later is kept, the earlier rejected."""
    documents: dict[str, ParsedDocument] = {}
    rejected: list[RejectedLine] = []
    for item in items:
        if isinstance(item, RejectedLine):
            rejected.append(item)
            continue
        earlier = documents.pop(item.external_id, None)
        if earlier is not None:
            rejected.append(
                RejectedLine(earlier.line, earlier.external_id, f"document id {earlier.external_id!r} appears again "
                             f"at line {item.line} of the same shard; the later one was kept")
            )  # fmt: skip
        documents[item.external_id] = item
    return list(documents.values()), rejected


def _write(
    session: Session, job_id: uuid.UUID, shard: _Shard, documents: list[ParsedDocument], settings: Settings
) -> int:
    """Upsert the documents, batch the ones to embed and send the batches; return how many need embedding."""
    repo = CollectionRepository(session)
    # Sorted by id: concurrent upserts then lock rows in one order and never deadlock.
    inputs = sorted(
        (DocumentInput(d.external_id, d.text, d.metadata, content_hash(d.text), shard.object_uri) for d in documents),
        key=lambda d: d.external_id,
    )
    pending_total = 0
    job = JobRepository(session).get(job_id)
    assert job is not None  # locked running by the caller
    for piece in _batches(inputs, settings):
        pending = repo.upsert_documents(shard.collection_id, piece)
        if pending:
            seq = repo.next_batch_seq(job_id)
            repo.add_batch(job_id, seq, [d.id for d in pending], [d.content_hash for d in pending])
            # Fair queues: a source's batches wait behind other tenants' small work as an upload's do.
            [priority] = batch_priorities(session, job.tenant, settings, 1)
            enqueue(session, TaskName.INGEST_BATCH, str(job_id), seq, priority=priority)
            pending_total += len(pending)
    return pending_total


def _batches(inputs: list[DocumentInput], settings: Settings) -> Iterator[list[DocumentInput]]:
    """Return runs of at most EMBEDQ_INGEST_BATCH_DOCUMENTS documents and EMBEDQ_INGEST_BATCH_CHARS characters.

    The runs are even: 300 documents with a limit of 256 make two batches of 150, not 256 and 44, so the
    workers that take a shard's batches finish them together.
    """
    runs = max(1, math.ceil(len(inputs) / settings.ingest_batch_documents))
    per_run = max(1, math.ceil(len(inputs) / runs))
    piece: list[DocumentInput] = []
    chars = 0
    for doc in inputs:
        if piece and (len(piece) >= per_run or chars + len(doc.text) > settings.ingest_batch_chars):
            yield piece
            piece, chars = [], 0
        piece.append(doc)
        chars += len(doc.text)
    if piece:
        yield piece


def _record_object(session: Session, job_id: uuid.UUID, shard: _Shard) -> None:
    """Once every shard of the object is read without a break, remember it as synced at its signature."""
    sources = SourceRepository(session)
    states = sources.object_states(job_id, shard.object_uri)
    if states and all(s == ShardState.DONE.value for s in states):
        sources.record_synced(shard.collection_id, shard.object_uri, shard.spec.uri, shard.signature, job_id)
