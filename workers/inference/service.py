"""The worker side of a synchronous request: batch it with its neighbours (or run it alone) and reply."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from app.core.config import get_settings
from workers.inference.batcher import BatcherSettings, Delivery, process_batcher
from workers.inference.ops import Payload, weight_of
from workers.inference.replies import reply_of
from workers.inference.runner import run_group


def _batcher_settings() -> BatcherSettings:
    settings = get_settings()
    if not settings.enable_dynamic_batching:
        return BatcherSettings.off()
    return BatcherSettings(
        max_wait_s=settings.max_wait_time_ms / 1000,
        min_batch_size=settings.min_batch_size,
        max_batch_inputs=settings.max_batch_inputs,
    )


def submit(op: str, model: str, payload: Payload, *, deadline: float | None = None) -> Future[Delivery]:
    """Return a future of the request's Delivery, run on the process's batcher thread.

    Batched with its neighbours unless EMBEDQ_ENABLE_DYNAMIC_BATCHING is off. ``deadline`` (epoch seconds) is
    when the API stops waiting: the batcher drops a request still unrun by then with a 504.
    """
    batcher = process_batcher(run_group, _batcher_settings())
    return batcher.submit(op, model, payload, weight=weight_of(op, payload), deadline=deadline)


def handle_request(op: str, model: str, payload: Payload, *, deadline: float | None = None) -> dict[str, Any]:
    """Return the reply the API reads (``workers/inference/replies.py``), waiting for the request's batch."""
    return reply_of(submit(op, model, payload, deadline=deadline).result())
