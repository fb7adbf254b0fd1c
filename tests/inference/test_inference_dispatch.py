"""The API side of the sync path on the session's real Redis, with no worker process.

The test plays the worker with the worker's own pieces: it takes the task message off the Redis queue and
answers it with the worker's ReplyWriter (stored under the Celery result key, published on the message's
``reply_to``), or stores a state with Celery's result backend; tests/e2e/test_v1_e2e.py runs a real worker.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from concurrent.futures import Future
from typing import Any

import pytest
import redis
from celery import states
from support.settings import SettingsEnv

from app.core.celery import celery_client
from app.core.config import get_settings
from app.inference.dispatch import infer, request
from app.inference.errors import InferenceFailedError, InferenceRejectedError, InferenceTimeoutError
from app.inference.results import result_listener
from workers.inference.batcher import Delivery
from workers.inference.ops import OpError
from workers.inference.replies import ReplyWriter


@pytest.fixture
def queue(settings_env: SettingsEnv, clean_state: None) -> str:
    """Return a sync queue name of this test's own (nobody consumes it)."""
    name = f"sync-test-{secrets.token_hex(3)}"
    settings_env.set(EMBEDQ_SYNC_QUEUE=name)
    return name


def take_message(client: redis.Redis, queue: str, timeout: float = 30) -> dict[str, Any]:
    """Return the next task message of ``queue`` as kombu's Redis transport stores it, with its body decoded."""
    popped = client.brpop([queue], timeout=timeout)
    assert popped is not None, f"no message arrived on {queue}"
    message = json.loads(popped[1])
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    return {
        "id": message["headers"]["id"],
        "headers": message["headers"],
        "reply_to": message["properties"]["reply_to"],
        "args": args,
        "kwargs": kwargs,
    }


async def answer(client: redis.Redis, queue: str, reply: dict[str, Any]) -> dict[str, Any]:
    """Play the worker: take one message and write ``reply`` for it with the worker's ReplyWriter."""
    message = await asyncio.to_thread(take_message, client, queue)
    done: Future[Delivery] = Future()
    if "error" in reply:
        error = reply["error"]
        done.set_result(
            Delivery(OpError(error["message"], status=error["status"], code=error["code"], param=error["param"]), 1, 1)
        )
    else:
        done.set_result(Delivery(reply["result"], reply["batch"]["requests"], reply["batch"]["inputs"]))
    writer = ReplyWriter(celery_client().backend, max_pending=1)
    writer.admit()
    writer.deliver(message["id"], message["reply_to"], message["kwargs"]["deadline"], done)
    return message


async def store_state(client: redis.Redis, queue: str, reply: Any, state: str) -> dict[str, Any]:
    """Play a worker that only stores a state with Celery's result backend (a failed or revoked task)."""
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


def test_the_reply_comes_on_the_listeners_channel_and_its_stored_copy_outlives_the_deadline_by_a_minute(
    queue: str, redis_client
) -> None:
    async def scenario() -> tuple[Any, dict[str, Any], str]:
        reply = {"result": {"answer": 42}, "batch": {"requests": 3, "inputs": 7}}
        got, message = await asyncio.gather(
            request("tokenize", "m", {"texts": ["a"]}, timeout=30), answer(redis_client, queue, reply)
        )
        return got, message, result_listener(get_settings().redis_url or "").channel

    started = time.time()
    got, message, channel = asyncio.run(scenario())
    assert got.result == {"answer": 42} and (got.batch_requests, got.batch_inputs) == (3, 7)
    assert message["reply_to"] == channel and channel.startswith("embedq-replies-")
    ttl = redis_client.ttl(f"celery-task-meta-{message['id']}")
    assert 30 + 60 - (time.time() - started) - 2 <= ttl <= 30 + 60 + 1


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
    # Celery stores such states under the result key and publishes them on the key's own channel, not on
    # the listener's: the request reads the stored key when its time is up.
    async def scenario(reply: Any, state: str) -> None:
        await asyncio.gather(request("embed", "m", {}, timeout=1), store_state(redis_client, queue, reply, state))

    with pytest.raises(InferenceFailedError, match=r"worker failed on request .*kaboom"):
        asyncio.run(scenario(RuntimeError("kaboom"), states.FAILURE))
    with pytest.raises(InferenceTimeoutError):
        asyncio.run(scenario(None, states.REVOKED))


def _meta(task_id: str, status: str, result: Any) -> str:
    return json.dumps({"status": status, "result": result, "task_id": task_id})


def test_the_listener_takes_its_tasks_final_replies_and_rereads_the_store_after_a_reconnect(redis_client) -> None:
    redis_url = get_settings().redis_url
    assert redis_url is not None
    mine, missed, other = (secrets.token_hex(8) for _ in range(3))
    # Named, so that only this listener's connection is cut: the Redis server may be shared with workers
    # and other test sessions, whose pub/sub connections must not be killed.
    name = f"embedq-test-listener-{secrets.token_hex(4)}"

    async def scenario() -> tuple[Any, Any]:
        listener = result_listener(f"{redis_url}{'&' if '?' in redis_url else '?'}client_name={name}")
        async with listener.expect(mine) as first:
            redis_client.publish(listener.channel, _meta(mine, "STARTED", None))
            redis_client.publish(listener.channel, _meta(other, "SUCCESS", "not mine"))
            redis_client.publish(listener.channel, _meta(mine, "SUCCESS", "published"))
            published = await asyncio.wait_for(first, 10)
        async with listener.expect(missed) as second:
            # The reply is stored while the listener's connection is down, so its message never arrives.
            ours = [c for c in redis_client.client_list(_type="pubsub") if c.get("name") == name]
            assert ours, "the listener's pub/sub connection was not found"
            for client in ours:
                assert redis_client.client_kill_filter(_id=client["id"]) == 1
            redis_client.set(f"celery-task-meta-{missed}", _meta(missed, "SUCCESS", "stored"))
            stored = await asyncio.wait_for(second, 10)
        return published, stored

    published, stored = asyncio.run(scenario())
    assert published["result"] == "published" and stored["result"] == "stored"


def test_concurrent_first_requests_of_a_fresh_listener_share_one_subscription(redis_client) -> None:
    redis_url = get_settings().redis_url
    assert redis_url is not None
    ids = [secrets.token_hex(8) for _ in range(32)]

    async def wait_for(listener: Any, task_id: str, subscribed: asyncio.Event, all_in: asyncio.Event) -> Any:
        async with listener.expect(task_id) as future:
            subscribed.set()
            await all_in.wait()
            return (await asyncio.wait_for(future, 10))["result"]

    async def scenario() -> tuple[list[Any], int]:
        listener = result_listener(redis_url)  # a new event loop: a listener that has never connected
        events = [asyncio.Event() for _ in ids]
        all_in = asyncio.Event()
        waiting = [asyncio.create_task(wait_for(listener, i, e, all_in)) for i, e in zip(ids, events, strict=True)]
        for event in events:
            await event.wait()
        subscribers = dict(redis_client.pubsub_numsub(listener.channel))[listener.channel.encode()]
        for task_id in ids:
            redis_client.publish(listener.channel, _meta(task_id, "SUCCESS", task_id))
        all_in.set()
        return await asyncio.gather(*waiting), subscribers

    results, subscribers = asyncio.run(scenario())
    assert results == ids and subscribers == 1
