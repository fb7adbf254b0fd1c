"""Await Celery results without a thread per request: one Redis pub/sub connection per event loop.

Celery's Redis result backend stores a task's result under ``celery-task-meta-<id>`` and publishes it on a
channel of the same name. A waiting request subscribes to its channel before its task is sent; once Redis
confirms the subscription, the stored key is read once too, which catches a result published before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from celery import states
from redis.asyncio import Redis

log = logging.getLogger(__name__)

Meta = dict[str, Any]


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
    """Delivers task results published on Redis to the coroutines waiting for them (one event loop)."""

    def __init__(self, redis_url: str) -> None:
        self._redis = Redis.from_url(redis_url)
        self._pubsub = self._redis.pubsub()
        self._waiting: dict[bytes, asyncio.Future[Meta]] = {}
        # redis-py's PubSub connects on its first command: concurrent first subscribes would each open a
        # connection of their own, of which the reader only reads the last. One (un)subscribe at a time.
        self._commands = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._chores: set[asyncio.Task[Any]] = set()

    @contextlib.asynccontextmanager
    async def expect(self, key: str) -> AsyncIterator[asyncio.Future[Meta]]:
        """Yield a future of the task meta stored under ``key``; subscribed before the body runs."""
        channel = key.encode()
        future: asyncio.Future[Meta] = asyncio.get_running_loop().create_future()
        self._waiting[channel] = future
        try:
            async with self._commands:
                await self._pubsub.subscribe(channel)
            self._start_reader()
            yield future
        finally:
            del self._waiting[channel]
            self._later(self._unsubscribe(channel))
            if future.done() and not future.cancelled():
                # The caller has the result: Redis need not keep it for result_expires.
                self._later(self._redis.delete(channel))

    async def _unsubscribe(self, channel: bytes) -> None:
        async with self._commands:
            await self._pubsub.unsubscribe(channel)

    async def stored(self, key: str) -> Meta | None:
        """Return the final meta stored under ``key`` now, if any (a last look before giving up)."""
        return _ready_meta(await self._redis.get(key))

    def _start_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read(), name="embedq-result-listener")

    def _later(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._chores.add(task)
        task.add_done_callback(self._chore_done)

    def _chore_done(self, task: asyncio.Task[Any]) -> None:
        self._chores.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("result channel housekeeping failed: %s", task.exception())

    async def _read(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis went away: redis-py reconnects and resubscribes on the next read
                log.warning("reading task results from Redis failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            if message is not None:
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        future = self._waiting.get(channel)
        if future is None or future.done():
            return
        if message["type"] == "message":
            meta = _ready_meta(message["data"])
            if meta is not None:
                future.set_result(meta)
        elif message["type"] == "subscribe":
            self._later(self._settle_from_store(channel))

    async def _settle_from_store(self, channel: bytes) -> None:
        meta = _ready_meta(await self._redis.get(channel))
        future = self._waiting.get(channel)
        if meta is not None and future is not None and not future.done():
            future.set_result(meta)


_listeners: dict[asyncio.AbstractEventLoop, ResultListener] = {}


def result_listener(redis_url: str) -> ResultListener:
    """Return the ResultListener of the running event loop, creating it on first use."""
    loop = asyncio.get_running_loop()
    for old in [other for other in _listeners if other.is_closed()]:
        del _listeners[old]
    listener = _listeners.get(loop)
    if listener is None:
        listener = _listeners[loop] = ResultListener(redis_url)
    return listener
