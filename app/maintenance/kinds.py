"""How the reaper recovers each kind of job. A domain plugs its kind in with one entry in ``RECOVERIES``.

The contract for a kind's entry:

- every task in ``task_names`` takes the job's id as its first positional argument, so the reaper can tell
  from the broker whether the job still has work queued or running;
- ``requeue(session, job)`` re-enqueues whatever the job has left (with ``app.core.db.enqueue``, so it is
  sent only if the reaper's transaction commits) and returns how many tasks it enqueued. It is called with
  the job's row locked and the job still queued or running, and must be safe if the "lost" work turns up
  after all: idempotent tasks (a conditional claim, ``ON CONFLICT`` writes) make that free;
- ``requeue=None`` means the kind cannot be resumed: a job whose tasks were lost is failed with a reason;
- ``grace_s(settings)`` overrides EMBEDQ_REAPER_GRACE_S for kinds whose jobs may go longer without
  touching their row's ``updated_at`` (their heartbeat) while no message of theirs is in the broker.

Kinds without an entry are never touched by the reaper.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.batches.execution import requeue_batch
from app.collections.ingestion import requeue_ingest
from app.core.config import Settings
from app.core.queues import TaskName
from app.jobs.service import requeue_embedding_batches
from app.models.job import Job, JobKind
from app.sources.recovery import requeue_ingest_job
from app.training.service import requeue_training

RequeueWork = Callable[[Session, Job], int]


@dataclass(frozen=True)
class KindRecovery:
    """The reaper's view of one job kind."""

    task_names: frozenset[TaskName]
    requeue: RequeueWork | None
    grace_s: Callable[[Settings], float] | None = None


def _training_grace_s(settings: Settings) -> float:
    return settings.training_reaper_grace_s


RECOVERIES: dict[str, KindRecovery] = {
    JobKind.EMBEDDINGS.value: KindRecovery(frozenset({TaskName.EMBED_BATCH}), requeue_embedding_batches),
    # A training task touches its job at every progress report; a redelivered one resumes from its checkpoint.
    JobKind.FINE_TUNE.value: KindRecovery(frozenset({TaskName.TRAIN_FULL}), requeue_training, _training_grace_s),
    JobKind.FINE_TUNE_LORA.value: KindRecovery(frozenset({TaskName.TRAIN_LORA}), requeue_training, _training_grace_s),
    # Ingestion: pending batches are re-enqueued (a claimed batch changes nothing); a dead upload is closed.
    # A source job (app/sources) also re-sends its plan or its pending shards.
    JobKind.INGEST.value: KindRecovery(
        frozenset({TaskName.INGEST_BATCH, TaskName.INGEST_INDEX, TaskName.INGEST_PLAN, TaskName.INGEST_SHARD}),
        requeue_ingest_job,
    ),
    JobKind.REEMBED.value: KindRecovery(frozenset({TaskName.INGEST_REEMBED, TaskName.INGEST_INDEX}), requeue_ingest),
    # Batches: validation, the tasks with unanswered requests, or finalize, whichever the batch is at.
    JobKind.BATCH.value: KindRecovery(
        frozenset({TaskName.BATCH_VALIDATE, TaskName.BATCH_RUN, TaskName.BATCH_FINALIZE}), requeue_batch
    ),
}
