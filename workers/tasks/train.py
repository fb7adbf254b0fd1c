"""Training tasks (``train.full``, ``train.lora`` on the training queue): parse the id, run ``app.training.runner``.

A worker shutdown must not throw away hours of training, nor wait for them: when the worker's main process
starts shutting down it sends SIGTERM to the pool children running a training task; such a child finishes
its step, saves a checkpoint, and rejects its message back to the queue, so the next training worker
resumes from the checkpoint. (A SIGTERM sent straight to the child, as a process-group signal does, has the
same effect.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from types import FrameType
from typing import Any

from billiard.process import current_process
from celery import signals
from celery.exceptions import Reject

from app.core.config import get_settings
from app.core.db import session_scope
from app.core.queues import TaskName
from app.training.runner import RunOutcome, run_training
from workers.celery_app import retrying_task

log = logging.getLogger(__name__)

TRAINING_TASKS = frozenset({TaskName.TRAIN_FULL.value, TaskName.TRAIN_LORA.value})


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[threading.Event]:
    """Yield an event set by SIGTERM while the block runs; the previous handler is chained and then restored."""
    requested = threading.Event()
    previous = signal.getsignal(signal.SIGTERM)
    # In a pool child the previous handler ends the process at once; in a solo worker (training in the main
    # process) it is Celery's warm shutdown, which must still run.
    chain = callable(previous) and current_process().name == "MainProcess"

    def _handle(signum: int, frame: FrameType | None) -> None:
        log.warning("SIGTERM: training stops after this step and saves a checkpoint")
        requested.set()
        if chain:
            previous(signum, frame)

    signal.signal(signal.SIGTERM, _handle)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGTERM, previous)


@signals.worker_shutting_down.connect
def _stop_training_children(**_: Any) -> None:
    """In the worker's main process: ask every child running a training task to checkpoint and stop."""
    from celery.worker import state

    for request in list(state.active_requests):
        pid = request.worker_pid
        if request.name in TRAINING_TASKS and pid and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _run(job_id: str) -> dict[str, str]:
    from workers.training.trainer import train  # torch is imported here, in the child only

    with _stop_on_sigterm() as shutdown:
        outcome = run_training(session_scope, uuid.UUID(job_id), train, get_settings(), shutdown.is_set)
    if outcome is RunOutcome.INTERRUPTED:
        raise Reject(f"training job {job_id} checkpointed for a worker shutdown", requeue=True)
    return {"job_id": job_id, "outcome": outcome.value}


@retrying_task(TaskName.TRAIN_FULL)
def train_full(job_id: str) -> dict[str, str]:
    """Fine-tune all weights of job `job_id`'s base model and register the result."""
    return _run(job_id)


@retrying_task(TaskName.TRAIN_LORA)
def train_lora(job_id: str) -> dict[str, str]:
    """Train LoRA adapters for job `job_id` and register them over the base model."""
    return _run(job_id)
