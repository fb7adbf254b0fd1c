"""Which jobs still have a task message in the Redis broker, waiting in a queue or held by a worker.

Reads kombu's Redis layout: a queue is a list (one more per priority step), and a delivered message
waits for its ack in the ``unacked`` hash as ``[message, exchange, routing_key]``.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable
from typing import Any

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel

log = logging.getLogger(__name__)


def queue_keys(queues: Iterable[str]) -> list[str]:
    """Return the Redis lists kombu keeps for ``queues``: the queue itself and one per priority step."""
    return [f"{q}{Channel.sep}{step}" if step else q for q in queues for step in PRIORITY_STEPS]


def task_call(message: dict[str, Any]) -> tuple[str, list[Any]] | None:
    """Return (task name, positional args) of a Celery protocol-2 message, or None if it is something else."""
    try:
        name = message["headers"]["task"]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return (name, args) if isinstance(name, str) and isinstance(args, list) else None


def job_ids_in_broker(client: redis.Redis, queues: Iterable[str], task_names: Iterable[str]) -> set[str]:
    """Return the job ids (first argument) of every ``task_names`` message queued on ``queues`` or unacked.

    One MULTI/EXEC reads the queues and the unacked hash together: a message moving between them (a worker
    taking it, a sweep restoring it) is seen on one side or the other, never on neither.
    """
    names = set(task_names)
    pipe = client.pipeline(transaction=True)
    for key in queue_keys(queues):
        pipe.lrange(key, 0, -1)
    pipe.hvals(Channel.unacked_key)
    *queued, unacked = pipe.execute()
    messages = [json.loads(raw) for batch in queued for raw in batch]
    messages += [json.loads(raw)[0] for raw in unacked]
    found: set[str] = set()
    for message in messages:
        call = task_call(message)
        if call is None:
            log.debug("not a Celery task message: %.200r", message)
        elif call[0] in names and call[1]:
            found.add(str(call[1][0]))
    return found
