"""The worker side of a sync reply on the session's real Redis: stored and published as Celery stores a result.

``workers/inference/replies.py``: the sync task returns before its batch has run, and a ReplyWriter writes
each reply where the API's listener and ``AsyncResult`` look for it; ``admit`` bounds what a worker holds.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from concurrent.futures import Future

import pytest
import redis
from celery import states
from celery.result import AsyncResult
from kombu import Message
from kombu.exceptions import MessageStateError

from app.core.celery import celery_client
from app.core.config import get_settings
from workers.inference.batcher import Delivery
from workers.inference.ops import OpError
from workers.inference.replies import ReplyWriter


def done(outcome: dict | OpError) -> Future[Delivery]:
    future: Future[Delivery] = Future()
    future.set_result(Delivery(outcome, batch_requests=3, batch_inputs=7))
    return future


def subscribed(client: redis.Redis, task_id: str) -> redis.client.PubSub:
    pubsub = client.pubsub()
    pubsub.subscribe(celery_client().backend.get_key_for_task(task_id))
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    return pubsub


def published(pubsub: redis.client.PubSub) -> dict:
    message = pubsub.get_message(timeout=10)
    assert message is not None and message["type"] == "message", message
    return json.loads(message["data"])


def test_a_reply_is_stored_and_published_as_the_tasks_celery_result(clean_state: None, redis_client) -> None:
    backend = celery_client().backend
    writer = ReplyWriter(backend, max_pending=4)
    ok, bad = secrets.token_hex(8), secrets.token_hex(8)
    ok_channel, bad_channel = subscribed(redis_client, ok), subscribed(redis_client, bad)

    writer.admit()
    writer.deliver(ok, None, None, done({"count": 1}))
    writer.admit()
    writer.deliver(bad, None, None, done(OpError("input[0] is empty", param="input")))

    meta = published(ok_channel)
    assert meta["status"] == states.SUCCESS and meta["task_id"] == ok
    assert meta["result"] == {"result": {"count": 1}, "batch": {"requests": 3, "inputs": 7}}
    assert published(bad_channel)["result"] == {
        "error": {"message": "input[0] is empty", "status": 400, "code": "invalid_request", "param": "input"}
    }
    # Stored too, under Celery's key and expiry: AsyncResult reads it as any task's result.
    assert AsyncResult(ok, app=celery_client()).get(timeout=5) == meta["result"]
    assert 0 < redis_client.ttl(backend.get_key_for_task(ok)) <= int(backend.expires)


def test_a_reply_goes_to_the_apis_channel_and_is_kept_a_minute_past_the_deadline(
    clean_state: None, redis_client
) -> None:
    backend = celery_client().backend
    writer = ReplyWriter(backend, max_pending=1)
    task_id, channel = secrets.token_hex(8), f"embedq-replies-{secrets.token_hex(8)}"
    listening = redis_client.pubsub()
    listening.subscribe(channel)
    assert listening.get_message(timeout=5)["type"] == "subscribe"
    writer.admit()
    writer.deliver(task_id, channel, time.time() + 30, done({"count": 2}))
    assert published(listening)["result"]["result"] == {"count": 2}
    assert 89 <= redis_client.ttl(backend.get_key_for_task(task_id)) <= 91
    # A reply_to that is not an embedq listener's (Celery sets one on every message): published on the
    # result key's channel, as Celery's backend does.
    elsewhere = secrets.token_hex(8)
    key_channel = subscribed(redis_client, elsewhere)
    writer.admit()
    writer.deliver(elsewhere, "some-celery-oid", None, done({"count": 3}))
    assert published(key_channel)["result"]["result"] == {"count": 3}
    assert listening.get_message(timeout=0.2) is None


def test_a_request_that_failed_outside_its_op_still_gets_a_500_reply(clean_state: None, redis_client) -> None:
    writer = ReplyWriter(celery_client().backend, max_pending=1)
    task_id = secrets.token_hex(8)
    channel = subscribed(redis_client, task_id)
    broken: Future[Delivery] = Future()
    broken.set_exception(RuntimeError("the batcher is gone"))
    writer.admit()
    writer.deliver(task_id, None, None, broken)
    error = published(channel)["result"]["error"]
    assert error["status"] == 500 and "RuntimeError: the batcher is gone" in error["message"]
    # ... and its slot is free again.
    assert writer._slots.acquire(timeout=5)


def test_admit_blocks_at_max_pending_until_a_reply_is_written(clean_state: None) -> None:
    writer = ReplyWriter(celery_client().backend, max_pending=2)
    writer.admit()
    writer.admit()
    third = threading.Event()
    waiting = threading.Thread(target=lambda: (writer.admit(), third.set()), daemon=True)
    waiting.start()
    assert not third.wait(0.3), "a third request was admitted while two were pending"
    writer.deliver(secrets.token_hex(8), None, None, done({"count": 1}))
    assert third.wait(10), "the written reply did not free its slot"


def test_the_sync_queue_is_consumed_without_acks_and_its_requests_ack_nothing() -> None:
    from workers.celery_app import celery_app
    from workers.tasks.infer import UnackedRequest, run_inference

    sync = get_settings().sync_queue
    assert celery_app.amqp.queues[sync].no_ack

    def request_from(queue: str) -> UnackedRequest:
        headers, _, body, _ = celery_app.amqp.as_task_v2(secrets.token_hex(8), run_inference.name, kwargs={})
        message = Message(
            body=json.dumps(body),
            headers=headers,
            content_type="application/json",
            content_encoding="utf-8",
            delivery_info={"routing_key": queue},
            channel=None,  # any ack sent to the broker raises
        )
        # on_ack as Celery's strategy passes it (celery/worker/strategy.py).
        return UnackedRequest(message, on_ack=message.ack_log_error, app=celery_app, task=run_inference)

    from_sync = request_from(sync)
    from_sync.acknowledge()
    assert from_sync.acknowledged
    with pytest.raises(MessageStateError):
        request_from("inference").acknowledge()


def test_drain_waits_for_the_held_requests_replies(clean_state: None) -> None:
    writer = ReplyWriter(celery_client().backend, max_pending=3)
    writer.admit()
    writer.admit()
    assert writer.drain(0.2) == 2  # two replies owed, none written
    ids = [secrets.token_hex(8) for _ in range(2)]
    later = threading.Timer(0.3, lambda: [writer.deliver(i, None, None, done({"count": 1})) for i in ids])
    later.start()
    assert writer.drain(10) == 0
    assert writer.drain(0) == 0  # and every slot is free again
