"""A job task whose worker dies every time it runs it is given up after EMBEDQ_TASK_MAX_STARTS starts.

A task is acknowledged late and rejected back to its queue when its worker process is lost
(``task_acks_late``, ``task_reject_on_worker_lost``): a worker killed by a scale-in or a node drain loses no
work. But a task that itself kills its worker (out of memory on one huge batch, a native library's crash,
a hard time limit) then goes back to the queue and kills the next worker, on every host of a fleet, forever,
and the broker counts nothing. So each start of a job task counts one in Redis under its task id (the key
lives a day), and every end a worker sees (success, failure, a retry) deletes the count: only starts that
never ended add up. A start past the limit runs no model and the message is acknowledged: a task over a
job's inputs (an embedding, ingest, reembed or Batch API batch) fails just those inputs, saying why, and
the job goes on; any other fails its job. A source shard gives up on its own, sooner, failing only its
documents (EMBEDQ_SOURCE_SHARD_MAX_ATTEMPTS).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from functools import cache
from typing import Any, NoReturn

import redis
from celery import signals

from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.jobs import lifecycle

log = logging.getLogger(__name__)

KEY = "embedq:task-starts:{}"
_KEPT_S = 24 * 3600
_counted: set[str] = set()  # the task ids this process counted a start of and has not seen end


@cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


def count_start(task_id: str, settings: Settings) -> int:
    """Count one more start of the task ``task_id``; return its starts that have not ended, this one included."""
    key = KEY.format(task_id)
    with _client(settings.require_services()[1]).pipeline() as pipe:
        starts, _ = pipe.incr(key).expire(key, _KEPT_S).execute()
    _counted.add(task_id)
    return int(starts)


def reason(task_name: str, starts: int, settings: Settings) -> str:
    """Return why a task is given up at start ``starts``, for its job's error or its inputs' errors."""
    return (
        f"its task {task_name} was started {starts - 1} times and its worker died each time (killed for memory? "
        f"a smaller batch_size, or fewer or shorter inputs, may fit): given up after EMBEDQ_TASK_MAX_STARTS "
        f"({settings.task_max_starts}) starts"
    )


def give_up(job_id: str, why: str) -> bool:
    """Fail job ``job_id`` because its task died at every start; False if the job had already ended."""
    log.error("job %s: %s", job_id, why)
    with session_scope() as session:
        return lifecycle.fail(session, uuid.UUID(job_id), why, message="failed: its task kept killing its worker")


class TaskKilledWorkerError(RuntimeError):
    """Raised in place of the model of a task given up: its inputs fail with the reason, its job goes on."""


def refusing(why: str) -> Callable[..., NoReturn]:
    """Return a stand-in for a task's model function (encode, load) that raises TaskKilledWorkerError(``why``)."""

    def refuse(*_: Any, **__: Any) -> NoReturn:
        raise TaskKilledWorkerError(why)

    return refuse


@signals.task_postrun.connect
def _ended(task_id: str | None = None, **_: Any) -> None:
    """Delete the task's count: it ended, whichever way (a retry comes back under the same id and counts anew).

    Only for the tasks this process counted: the sync path's tasks pay no round trip to Redis.
    """
    if task_id is None or task_id not in _counted:
        return
    _counted.discard(task_id)
    try:
        _client(get_settings().require_services()[1]).delete(KEY.format(task_id))
    except redis.RedisError:  # Redis away: the key expires on its own; this start still ended
        log.warning("could not clear the start count of task %s", task_id)
