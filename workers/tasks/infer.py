"""The synchronous inference task: one request of /v1/embeddings, /vectorize, /tokenize, ... on the sync queue.

The task queues its request on the process's dynamic batcher and returns at once; when the batch has run,
the reply is stored under the task's result key and published on the caller's channel
(``workers/inference/replies.py``). So the worker takes the next message while a batch runs, and requests
that wait together run together, on any pool: `embedq up` runs the sync queue on a solo-pool worker
(``-Q sync -P solo``), where a message goes from the consumer to the batcher with no thread in between.
The sync queue is consumed without acks (``app/core/celery.py``): nobody waits for a redelivered sync
request, its caller got a 504 long before.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from functools import partial
from typing import Any

from celery import Task, signals
from celery.worker.request import Request

from app.core.config import get_settings
from app.core.queues import TaskName
from app.observability.tracing import annotate
from workers.celery_app import celery_app, pool_runs_in_process
from workers.inference.replies import drain_process_writer, process_writer
from workers.inference.service import handle_request, submit

log = logging.getLogger(__name__)


class UnackedRequest(Request):
    """A request taken from a queue consumed without acks (the sync queue): the broker has nothing to ack."""

    def acknowledge(self) -> None:
        queue = celery_app.amqp.queues.get((self.delivery_info or {}).get("routing_key"))
        if queue is not None and queue.no_ack:
            self.acknowledged = True
        else:
            super().acknowledge()


@celery_app.task(
    bind=True,
    Request=UnackedRequest,
    name=TaskName.INFERENCE_RUN.value,
    acks_late=False,
    track_started=False,
    # The reply is written by the ReplyWriter, not by Celery. A request that expired unrun is still stored
    # as REVOKED, which the API reads when it stops waiting (its deadline is the message's expiry): a 504.
    ignore_result=True,
    store_errors_even_if_ignored=True,
)
def run_inference(self: Task, op: str, model: str, payload: dict[str, Any], deadline: float | None = None) -> None:
    """Queue op ``op`` with ``model`` on ``payload``; its reply (``{"result", "batch"}`` or ``{"error"}``) is
    stored under this task's result key when its batch has run."""
    inputs = payload.get("texts") or payload.get("token_ids") or payload.get("documents") or []
    annotate(op=op, model=model, batch_size=len(inputs) if isinstance(inputs, list) else None)
    writer = process_writer(self.backend, get_settings().sync_worker_requests)
    writer.admit()
    try:
        future = submit(op, model, payload, deadline=deadline)
    except Exception as exc:  # the slot is taken: the reply (a 500) must still go out and free it
        future = Future()
        future.set_exception(exc)
    future.add_done_callback(partial(writer.deliver, self.request.id, self.request.reply_to, deadline))


@signals.worker_ready.connect
def _preload_in_process(sender: Any = None, **_: Any) -> None:
    # A solo or thread-pool worker runs tasks in its own process (no fork), so it may load models before
    # the first request rather than during it: EMBEDQ_PRELOAD_MODELS, else the default model.
    if not pool_runs_in_process():
        return
    settings = get_settings()
    for name in settings.preload_models or [settings.default_model]:
        # On the thread that will run every request (workers/inference/batcher.py says why it matters).
        outcome = handle_request("warm_up", name, {})
        if "error" in outcome:  # a model that cannot load now is reported to the requests that ask for it
            log.error("could not preload model %s: %s", name, outcome["error"]["message"])
        else:
            log.info("preloaded model %s", name)


@signals.worker_shutdown.connect
def _answer_held_requests(**_: Any) -> None:
    # The consumer has stopped; the requests this worker took are still in its batcher (a daemon thread).
    # Let them run and their replies go out before the process exits, within their callers' patience.
    left = drain_process_writer(get_settings().sync_timeout_s)
    if left:
        log.warning("%d sync requests were not answered before shutdown: their callers get a 504", left)
