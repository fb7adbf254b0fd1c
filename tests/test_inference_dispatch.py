"""The API side of the sync path on the session's real Redis, with no worker process.

The test plays the worker with Celery's own pieces: it takes the task message off the Redis queue and
stores the reply with Celery's result backend, as a worker would; tests/test_v1_api.py runs a real one.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import states

from app.core.celery import celery_client
from app.core.config import get_settings
from app.inference.dispatch import infer, request
from app.inference.errors import InferenceFailedError, InferenceRejectedError, InferenceTimeoutError
from app.inference.results import result_listener


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch, clean_state: None) -> Iterator[str]:
    """Yield a sync queue name of this test's own (nobody consumes it)."""
    name = f"sync-test-{secrets.token_hex(3)}"
    monkeypatch.setenv("EMBEDQ_SYNC_QUEUE", name)
    get_settings.cache_clear()
    yield name
    get_settings.cache_clear()


def take_message(client: redis.Redis, queue: str, timeout: float = 30) -> dict[str, Any]:
    """Return the next task message of ``queue`` as kombu's Redis transport stores it, with its body decoded."""
    popped = client.brpop([queue], timeout=timeout)
    assert popped is not None, f"no message arrived on {queue}"
    message = json.loads(popped[1])
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    return {"id": message["headers"]["id"], "headers": message["headers"], "args": args, "kwargs": kwargs}


async def answer(client: redis.Redis, queue: str, reply: Any, state: str = states.SUCCESS) -> dict[str, Any]:
    """Play the worker: take one message and store ``reply`` for it with Celery's result backend."""
    message = await asyncio.to_thread(take_message, client, queue)
    celery_client().backend.store_result(message["id"], reply, state)
    return message


def test_a_request_nobody_answers_times_out_with_504_and_its_message_expires(queue: str, redis_client) -> None:
    started = time.time()
    with pytest.raises(InferenceTimeoutError) as caught:
        asyncio.run(infer("embed", "some-model", {"texts": ["hi"]}, timeout=0.3))
    assert caught.value.status_code == 504
    assert f"consumes the {queue!r} queue" in caught.value.message and "0.3s" in caught.value.message
    message = take_message(redis_client, queue, timeout=1)
    assert message["headers"]["task"] == "inference.run"
    assert message["kwargs"]["op"] == "embed" and message["kwargs"]["payload"] == {"texts": ["hi"]}
    deadline = message["kwargs"]["deadline"]
    assert started < deadline < time.time() + 0.3
    # The worker that finds this message later drops it unrun: Celery discards expired messages.
    expires = message["headers"]["expires"]
    assert expires is not None and abs(_epoch(expires) - deadline) < 0.01
    assert message["id"] in caught.value.message


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_the_reply_is_delivered_and_its_stored_copy_removed(queue: str, redis_client) -> None:
    async def scenario() -> tuple[Any, dict[str, Any]]:
        reply = {"result": {"answer": 42}, "batch": {"requests": 3, "inputs": 7}}
        got, message = await asyncio.gather(
            request("tokenize", "m", {"texts": ["a"]}, timeout=30), answer(redis_client, queue, reply)
        )
        await asyncio.sleep(0.2)  # the listener forgets the stored result in the background
        return got, message

    got, message = asyncio.run(scenario())
    assert got.result == {"answer": 42} and (got.batch_requests, got.batch_inputs) == (3, 7)
    assert redis_client.get(f"celery-task-meta-{message['id']}") is None


def _error(status: int, code: str, param: str | None = None) -> dict[str, Any]:
    return {"message": f"the worker says {code}", "status": status, "code": code, "param": param}


@pytest.mark.parametrize(
    ("error", "raised", "status"),
    [
        (_error(400, "input_too_long", "input"), InferenceRejectedError, 400),
        (_error(404, "model_not_found", "model"), InferenceRejectedError, 404),
        (_error(500, "inference_failed"), InferenceFailedError, 500),
        (_error(504, "timeout"), InferenceTimeoutError, 504),
    ],
)
def test_worker_errors_become_domain_errors_with_the_workers_status_and_message(
    queue: str, redis_client, error: dict[str, Any], raised: type[Exception], status: int
) -> None:
    async def scenario() -> None:
        await asyncio.gather(request("embed", "m", {}, timeout=30), answer(redis_client, queue, {"error": error}))

    with pytest.raises(raised) as caught:
        asyncio.run(scenario())
    assert caught.value.status_code == status
    if raised is InferenceRejectedError:
        assert (caught.value.message, caught.value.code, caught.value.param) == (
            error["message"],
            error["code"],
            error["param"],
        )


def test_a_failed_or_revoked_task_is_a_500_or_a_504(queue: str, redis_client) -> None:
    async def scenario(reply: Any, state: str) -> None:
        await asyncio.gather(request("embed", "m", {}, timeout=30), answer(redis_client, queue, reply, state))

    with pytest.raises(InferenceFailedError, match=r"worker failed on request .*kaboom"):
        asyncio.run(scenario(RuntimeError("kaboom"), states.FAILURE))
    with pytest.raises(InferenceTimeoutError):
        asyncio.run(scenario(None, states.REVOKED))


def test_the_listener_reads_a_result_stored_before_it_subscribed_and_ignores_started(redis_client) -> None:
    redis_url = get_settings().redis_url
    assert redis_url is not None
    early = f"celery-task-meta-{secrets.token_hex(8)}"
    later = f"celery-task-meta-{secrets.token_hex(8)}"
    redis_client.set(early, json.dumps({"status": "SUCCESS", "result": "stored first"}))

    async def scenario() -> tuple[Any, Any]:
        listener = result_listener(redis_url)
        async with listener.expect(early) as first:
            stored = await asyncio.wait_for(first, 10)
        async with listener.expect(later) as second:
            await asyncio.sleep(0.1)  # subscribed by now
            redis_client.publish(later, json.dumps({"status": "STARTED", "result": None}))
            redis_client.publish(later, json.dumps({"status": "SUCCESS", "result": "published"}))
            published = await asyncio.wait_for(second, 10)
        return stored, published

    stored, published = asyncio.run(scenario())
    assert stored["result"] == "stored first" and published["result"] == "published"


def test_concurrent_first_requests_of_a_fresh_listener_all_get_their_results(redis_client) -> None:
    redis_url = get_settings().redis_url
    assert redis_url is not None
    keys = [f"celery-task-meta-{secrets.token_hex(8)}" for _ in range(32)]

    async def wait_for(listener: Any, key: str, subscribed: asyncio.Event, all_in: asyncio.Event) -> Any:
        async with listener.expect(key) as future:
            subscribed.set()
            await all_in.wait()
            return (await asyncio.wait_for(future, 10))["result"]

    async def scenario() -> list[Any]:
        listener = result_listener(redis_url)  # a new event loop: a listener that has never connected
        events = [asyncio.Event() for _ in keys]
        all_in = asyncio.Event()
        waiting = [asyncio.create_task(wait_for(listener, k, e, all_in)) for k, e in zip(keys, events, strict=True)]
        for event in events:
            await event.wait()
        await asyncio.sleep(0.1)
        for key in keys:
            redis_client.publish(key, json.dumps({"status": "SUCCESS", "result": key}))
        all_in.set()
        return await asyncio.gather(*waiting)

    assert asyncio.run(scenario()) == keys
