"""Where a sync request's reply goes once its batch has run: the task's Celery result key, and a channel.

The sync task does not wait for its batch (``workers/tasks/infer.py``): it queues the request on the
process's batcher and returns, so a request holds no pool thread and the worker takes the next message at
once. When the batch has run, a ``ReplyWriter`` stores each reply as Celery's Redis backend stores a task's
result (the same key and meta, so ``AsyncResult(task_id)`` reads it) and publishes it on the channel the
API named as the task's ``reply_to`` (``app/inference/results.py``), or else on the key's own channel, as
Celery does. A stored reply is kept until a minute after its caller's deadline: the API reads it only if
the published one went astray. Replies that are ready together go out in one pipeline: one Redis round
trip for a whole batch, not three per request (Celery's backend reads the stored state before it writes).

``admit`` bounds the requests one worker holds (EMBEDQ_SYNC_WORKER_REQUESTS): past it the sync task blocks,
so the consumer stops taking messages and the rest wait in Redis for this or another worker.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend

from app.inference.results import REPLY_CHANNEL_PREFIX
from workers.inference.batcher import Delivery
from workers.inference.ops import OpError

log = logging.getLogger(__name__)

Reply = dict[str, Any]

# A stored reply outlives its caller's deadline by this much (a reply with no deadline: result_expires).
KEEP_AFTER_DEADLINE_S = 60


def reply_of(delivery: Delivery) -> Reply:
    """Return the JSON-able reply the API reads: ``{"result", "batch"}`` on success, ``{"error"}`` otherwise."""
    if isinstance(delivery.outcome, OpError):
        return {"error": delivery.outcome.to_wire()}
    return {
        "result": delivery.outcome,
        "batch": {"requests": delivery.batch_requests, "inputs": delivery.batch_inputs},
    }


def _failure(exc: BaseException) -> Reply:
    error = OpError(
        f"the sync worker failed ({type(exc).__name__}: {exc}); see its log", status=500, code="inference_failed"
    )
    return {"error": error.to_wire()}


@dataclass(frozen=True)
class _Outgoing:
    task_id: str
    reply_to: str | None
    deadline: float | None
    body: Reply


class ReplyWriter:
    """Stores and publishes the replies of one process's sync requests, from a thread of its own."""

    def __init__(self, backend: RedisBackend, *, max_pending: int) -> None:
        self._backend = backend
        self.max_pending = max_pending
        self._slots = threading.BoundedSemaphore(max_pending)
        self._queue: queue.SimpleQueue[_Outgoing] = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def admit(self) -> None:
        """Block until this process holds fewer than ``max_pending`` requests, then count one more."""
        self._slots.acquire()

    def deliver(self, task_id: str, reply_to: str | None, deadline: float | None, future: Future[Delivery]) -> None:
        """Queue the reply of ``task_id`` once ``future`` is done (a done-callback); frees its slot when written.

        ``reply_to`` is the channel the API listens on (the task's ``reply_to``), ``deadline`` when it stops.
        """
        try:
            body = reply_of(future.result())
        except BaseException as exc:  # a reply must go out whatever happened, or the caller waits for its 504
            log.exception("sync request %s failed outside its op", task_id)
            body = _failure(exc)
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="embedq-replies", daemon=True)
                self._thread.start()
        self._queue.put(_Outgoing(task_id, reply_to, deadline, body))

    def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every admitted request's reply to be written; return how many are not."""
        deadline = time.monotonic() + timeout
        taken = 0
        while taken < self.max_pending and self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            taken += 1
        for _ in range(taken):
            self._slots.release()
        return self.max_pending - taken

    def _loop(self) -> None:
        while True:
            ready = [self._queue.get()]
            while True:
                try:
                    ready.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._store(ready)
            except Exception:  # Redis is away: these callers get their 504 when they stop waiting
                log.exception("could not store the replies of %d sync requests", len(ready))
            finally:
                for _ in ready:
                    self._slots.release()

    def _store(self, ready: list[_Outgoing]) -> None:
        backend = self._backend
        now = time.time()
        done = datetime.fromtimestamp(now, UTC).isoformat()
        pipe = backend.client.pipeline(transaction=False)
        for reply in ready:
            key = backend.get_key_for_task(reply.task_id)
            meta = {
                "status": states.SUCCESS,
                "result": reply.body,
                "traceback": None,
                "children": [],
                "date_done": done,
                "task_id": reply.task_id,
            }
            value = backend.encode(meta)
            keep = backend.expires
            if reply.deadline is not None:
                after_deadline = max(1, math.ceil(reply.deadline - now) + KEEP_AFTER_DEADLINE_S)
                keep = min(keep, after_deadline) if keep else after_deadline
            pipe.set(key, value, ex=int(keep) if keep else None)
            ours = reply.reply_to is not None and reply.reply_to.startswith(REPLY_CHANNEL_PREFIX)
            pipe.publish(reply.reply_to if ours else key, value)
        pipe.execute()


_writers: dict[int, ReplyWriter] = {}
_writers_lock = threading.Lock()


def process_writer(backend: RedisBackend, max_pending: int) -> ReplyWriter:
    """Return this process's ReplyWriter, made on first use (again in a forked child)."""
    with _writers_lock:
        writer = _writers.get(os.getpid())
        if writer is None or writer.max_pending != max_pending:
            writer = _writers[os.getpid()] = ReplyWriter(backend, max_pending=max_pending)
        return writer


def drain_process_writer(timeout: float) -> int:
    """Wait for this process's pending sync replies (see ``ReplyWriter.drain``); 0 if it has none."""
    with _writers_lock:
        writer = _writers.get(os.getpid())
    return 0 if writer is None else writer.drain(timeout)
