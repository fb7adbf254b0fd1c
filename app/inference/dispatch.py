"""The API side of a synchronous request: send it to the sync queue, await the worker's reply, raise its errors.

``infer`` is the contract for endpoints that answer synchronously: they name an op a worker registered
(``workers/inference/ops.py``), a model and a JSON payload, and get the op's result dict back, or a domain
error: ``InferenceTimeoutError`` (504), ``InferenceRejectedError`` (the worker's 4xx and message) or
``InferenceFailedError`` (500).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio.to_thread
from celery import states

from app.core.celery import sync_sender
from app.core.config import Settings, get_settings
from app.core.queues import TaskName
from app.inference.errors import (
    InferenceFailedError,
    InferenceRejectedError,
    InferenceTimeoutError,
    InferenceUnavailableError,
)
from app.inference.results import Meta, result_listener


@dataclass(frozen=True)
class Reply:
    """An op's result for one request, and how many requests and inputs shared its batch."""

    result: dict[str, Any]
    batch_requests: int
    batch_inputs: int


async def infer(op: str, model: str, payload: dict[str, Any], *, timeout: float | None = None) -> dict[str, Any]:
    """Return op ``op``'s result for ``payload`` on ``model``, computed by a sync worker within ``timeout`` seconds.

    ``timeout`` defaults to EMBEDQ_SYNC_TIMEOUT_S. Raises the domain errors listed in the module docstring.
    """
    return (await request(op, model, payload, timeout=timeout)).result


async def request(op: str, model: str, payload: dict[str, Any], *, timeout: float | None = None) -> Reply:
    """Return the worker's Reply to one request (``infer`` with the batch it ran in)."""
    settings = get_settings()
    wait = settings.sync_timeout_s if timeout is None else timeout
    task_id = str(uuid.uuid4())
    deadline = time.time() + wait
    _, redis_url = settings.require_services()
    listener = result_listener(redis_url)
    async with listener.expect(task_id) as result:
        send = partial(_send, settings, task_id, op, model, payload, deadline, listener.channel)
        await anyio.to_thread.run_sync(send)
        try:
            meta = await asyncio.wait_for(result, timeout=max(0.0, deadline - time.time()))
        except TimeoutError:
            meta = await listener.stored(task_id)
            if meta is None:
                raise _timeout(settings, wait, task_id) from None
    return _reply(meta, task_id, settings, wait)


def _send(
    settings: Settings,
    task_id: str,
    op: str,
    model: str,
    payload: dict[str, Any],
    deadline: float,
    reply_to: str,
) -> None:
    sync_sender().send_task(
        TaskName.INFERENCE_RUN.value,
        kwargs={"op": op, "model": model, "payload": payload, "deadline": deadline},
        task_id=task_id,
        queue=settings.sync_queue,
        # The worker publishes the reply on this channel, which the listener has subscribed to already.
        reply_to=reply_to,
        # A worker that receives the message after the caller gave up drops it unrun.
        expires=datetime.fromtimestamp(deadline, tz=UTC),
    )


def _timeout(settings: Settings, wait: float, task_id: str) -> InferenceTimeoutError:
    return InferenceTimeoutError(
        f"no sync worker answered within {wait:g}s (request {task_id}); it will not run now. Check that a worker "
        f"consumes the {settings.sync_queue!r} queue (`embedq up` starts one), or raise EMBEDQ_SYNC_TIMEOUT_S",
        request_id=task_id,
    )


def _reply(meta: Meta, task_id: str, settings: Settings, wait: float) -> Reply:
    status = meta.get("status")
    body = meta.get("result")
    if status == states.REVOKED:
        raise _timeout(settings, wait, task_id)
    if status != states.SUCCESS or not isinstance(body, dict):
        failure = body.get("exc_message") if isinstance(body, dict) else body
        raise InferenceFailedError(
            f"the sync worker failed on request {task_id} ({status}: {failure}); see the worker's log",
            request_id=task_id,
        )
    error = body.get("error")
    if error is not None:
        raise _worker_error(error, settings, wait, task_id)
    batch = body.get("batch") or {}
    return Reply(body["result"], int(batch.get("requests", 1)), int(batch.get("inputs", 0)))


def _worker_error(error: dict[str, Any], settings: Settings, wait: float, task_id: str) -> Exception:
    status = int(error.get("status", 500))
    message = str(error.get("message", "the worker gave no reason"))
    if status == 504:
        return _timeout(settings, wait, task_id)
    if status == 503:
        return InferenceUnavailableError(message)
    if status >= 500:
        return InferenceFailedError(message, request_id=task_id)
    return InferenceRejectedError(
        message, status_code=status, code=str(error.get("code") or "invalid_request"), param=error.get("param")
    )
