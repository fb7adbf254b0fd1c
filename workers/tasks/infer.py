"""The synchronous inference task: one request of /v1/embeddings, /vectorize, /tokenize, ... on the sync queue.

Run it on a thread-pool worker (`embedq up` starts one: ``-Q sync -P threads``) so requests that wait
together are batched together; on a prefork worker each request runs alone. Acknowledged when it starts,
not when it ends: nobody waits for a redelivered sync request, its caller got a 504 long before.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from celery.concurrency.thread import TaskPool as ThreadTaskPool

from app.core.config import get_settings
from app.core.queues import TaskName
from workers.celery_app import celery_app
from workers.inference.service import handle_request

log = logging.getLogger(__name__)


@celery_app.task(name=TaskName.INFERENCE_RUN.value, acks_late=False, track_started=False)
def run_inference(op: str, model: str, payload: dict[str, Any], deadline: float | None = None) -> dict[str, Any]:
    """Run op ``op`` with ``model`` on ``payload``; returns ``{"result", "batch"}`` or ``{"error"}``."""
    return handle_request(op, model, payload, deadline=deadline)


@signals.worker_ready.connect
def _preload_in_thread_pool(sender: Any = None, **_: Any) -> None:
    # A thread-pool worker runs tasks in its own process (no fork), so it may load models before the first
    # request rather than during it: EMBEDQ_PRELOAD_MODELS, else the default model.
    if not isinstance(getattr(sender, "pool", None), ThreadTaskPool):
        return
    settings = get_settings()
    for name in settings.preload_models or [settings.default_model]:
        # On the thread that will run every request (workers/inference/batcher.py says why it matters).
        outcome = handle_request("warm_up", name, {})
        if "error" in outcome:  # a model that cannot load now is reported to the requests that ask for it
            log.error("could not preload model %s: %s", name, outcome["error"]["message"])
        else:
            log.info("preloaded model %s", name)
