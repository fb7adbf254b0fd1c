"""Queue and task names: the contract between the API (which sends by name) and the workers."""

from enum import StrEnum


class Queue(StrEnum):
    """Celery queues; a worker picks which to consume with ``-Q``."""

    INFERENCE = "inference"
    BULK = "bulk"
    TRAINING = "training"
    WEBHOOKS = "webhooks"
    MAINTENANCE = "maintenance"


class TaskName(StrEnum):
    """Dotted ``noun.verb`` task names."""

    EMBED_BATCH = "embed.batch"


TASK_QUEUES: dict[TaskName, Queue] = {
    TaskName.EMBED_BATCH: Queue.INFERENCE,
}
