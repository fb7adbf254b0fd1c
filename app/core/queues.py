"""Queue and task names: the contract between the API (which sends by name) and the workers."""

from enum import StrEnum


class Queue(StrEnum):
    """Celery queues; a worker picks which to consume with ``-Q``."""

    INFERENCE = "inference"
    BULK = "bulk"
    TRAINING = "training"
    WEBHOOKS = "webhooks"
    MAINTENANCE = "maintenance"
    # Synchronous requests (/v1/embeddings, /vectorize, ...): a caller is waiting, so they never queue
    # behind job batches; a dedicated solo-pool worker consumes it (README "Synchronous API").
    SYNC = "sync"


class TaskName(StrEnum):
    """Dotted ``noun.verb`` task names."""

    EMBED_BATCH = "embed.batch"
    WEBHOOK_DELIVER = "webhook.deliver"
    MAINTENANCE_REAP = "maintenance.reap"
    TRAIN_FULL = "train.full"
    TRAIN_LORA = "train.lora"
    INFERENCE_RUN = "inference.run"
    INGEST_BATCH = "ingest.batch"
    INGEST_REEMBED = "ingest.reembed"
    INGEST_INDEX = "ingest.index"
    INGEST_PLAN = "ingest.plan"
    INGEST_SHARD = "ingest.shard"
    BATCH_VALIDATE = "batch.validate"
    BATCH_RUN = "batch.run"
    BATCH_FINALIZE = "batch.finalize"


TASK_QUEUES: dict[TaskName, Queue] = {
    TaskName.EMBED_BATCH: Queue.INFERENCE,
    TaskName.WEBHOOK_DELIVER: Queue.WEBHOOKS,
    TaskName.MAINTENANCE_REAP: Queue.MAINTENANCE,
    TaskName.TRAIN_FULL: Queue.TRAINING,
    TaskName.TRAIN_LORA: Queue.TRAINING,
    TaskName.INFERENCE_RUN: Queue.SYNC,
    TaskName.INGEST_BATCH: Queue.BULK,
    TaskName.INGEST_REEMBED: Queue.BULK,
    TaskName.INGEST_INDEX: Queue.BULK,
    TaskName.INGEST_PLAN: Queue.BULK,
    TaskName.INGEST_SHARD: Queue.BULK,
    TaskName.BATCH_VALIDATE: Queue.BULK,
    TaskName.BATCH_RUN: Queue.BULK,
    TaskName.BATCH_FINALIZE: Queue.BULK,
}
