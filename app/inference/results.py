"""Await sync replies without a thread per request: one Redis pub/sub channel per API event loop.

Each event loop's ``ResultListener`` subscribes once to a channel of its own (``embedq-replies-<hex>``) and
sends it with every request as Celery's ``reply_to``. The worker stores each reply under the task's Celery
result key and publishes it on that channel (``workers/inference/replies.py``), with the task id in the
meta; the listener hands it to the request waiting for that id. So a request costs no SUBSCRIBE, no
UNSUBSCRIBE and no stored-key read of its own, only the one message that carries its reply.

A reply published while the pub/sub connection was down is not lost: on resubscribing the listener reads
the stored key of every request still waiting, and a request that times out reads its key once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from celery import states
from redis.asyncio import Redis

from app.core.celery import celery_client

log = logging.getLogger(__name__)

Meta = dict[str, Any]

REPLY_CHANNEL_PREFIX = "embedq-replies-"


def _ready_meta(raw: bytes | None) -> Meta | None:
    """Return the task meta in ``raw`` if it holds a final state (not STARTED or RETRY), else None."""
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        log.warning("ignoring a result that is not JSON (%d bytes)", len(raw))
        return None
    return meta if isinstance(meta, dict) and meta.get("status") in states.READY_STATES else None


class ResultListener:
    """Delivers the replies published on this event loop's channel to the coroutines waiting for them."""

    def __init__(self, redis_url: str) -> None:
        self._redis = Redis.from_url(redis_url)
        self._pubsub = self._redis.pubsub()
        self.channel = f"{REPLY_CHANNEL_PREFIX}{uuid.uuid4().hex}"
        self._waiting: dict[str, asyncio.Future[Meta]] = {}
        self._subscribed = asyncio.Event()
        self._start = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._chores: set[asyncio.Task[Any]] = set()

    @contextlib.asynccontextmanager
    async def expect(self, task_id: str) -> AsyncIterator[asyncio.Future[Meta]]:
        """Yield a future of task ``task_id``'s meta; the channel is subscribed before the body runs."""
        await self._ensure_subscribed()
        future: asyncio.Future[Meta] = asyncio.get_running_loop().create_future()
        self._waiting[task_id] = future
        try:
            yield future
        finally:
            del self._waiting[task_id]

    async def stored(self, task_id: str) -> Meta | None:
        """Return the final meta stored for ``task_id`` now, if any (a last look before giving up)."""
        return _ready_meta(await self._redis.get(result_key(task_id)))

    async def _ensure_subscribed(self) -> None:
        if self._reader is None or self._reader.done():
            async with self._start:
                if self._reader is None or self._reader.done():
                    self._subscribed.clear()
                    await self._pubsub.subscribe(self.channel)
                    self._reader = asyncio.get_running_loop().create_task(self._read(), name="embedq-replies")
        await self._subscribed.wait()

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis went away: redis-py reconnects and resubscribes on the next read
                log.warning("reading sync replies from Redis failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] == "message":
            meta = _ready_meta(message["data"])
            if meta is not None:
                self._settle(str(meta.get("task_id")), meta)
        elif message["type"] == "subscribe":
            if self._subscribed.is_set():  # a resubscription: replies may have gone out meanwhile
                self._later(self._settle_from_store(list(self._waiting)))
            self._subscribed.set()

    def _settle(self, task_id: str, meta: Meta) -> None:
        future = self._waiting.get(task_id)
        if future is not None and not future.done():
            future.set_result(meta)

    async def _settle_from_store(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            meta = await self.stored(task_id)
            if meta is not None:
                self._settle(task_id, meta)

    def _later(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chore_done)

    def _chore_done(self, task: asyncio.Task[Any]) -> None:
        self._chores.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("reading stored sync replies failed: %s", task.exception())


_listeners: dict[asyncio.AbstractEventLoop, ResultListener] = {}


def result_key(task_id: str) -> str:
    """Return the Redis key Celery's result backend stores task ``task_id``'s result under."""
    return celery_client().backend.get_key_for_task(task_id).decode()


def result_listener(redis_url: str) -> ResultListener:
    """Return the ResultListener of the running event loop, creating it on first use."""
    loop = asyncio.get_running_loop()
    for old in [other for other in _listeners if other.is_closed()]:
        del _listeners[old]
    listener = _listeners.get(loop)
    if listener is None:
        listener = _listeners[loop] = ResultListener(redis_url)
    return listener
