"""A job task whose worker dies every time it runs it is given up after EMBEDQ_TASK_MAX_STARTS starts.

A task is acknowledged late and rejected back to its queue when its worker process is lost
(``task_acks_late``, ``task_reject_on_worker_lost``): a worker killed by a scale-in or a node drain loses no
work. But a task that itself kills its worker (out of memory on one huge batch, a native library's crash,
a hard time limit) then goes back to the queue and kills the next worker, on every host of a fleet, forever,
and the broker counts nothing. So each start of a job task counts one in Redis under its task id (the key
lives a day), and every end a worker sees (success, failure, a retry) deletes the count: only starts that
never ended add up. A start past the limit runs nothing and fails the task's job, saying why, and the
message is acknowledged. A source shard gives up on its own, sooner, failing only its documents
(EMBEDQ_SOURCE_SHARD_MAX_ATTEMPTS).
"""

from __future__ import annotations

import logging
import uuid
from functools import cache
from typing import Any

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


def give_up(task_name: str, job_id: str, starts: int, settings: Settings) -> bool:
    """Fail job ``job_id`` because its task died at every start; False if the job had already ended."""
    reason = (
        f"its task {task_name} was started {starts - 1} times and its worker died each time (killed for memory? "
        f"a smaller batch_size, or fewer or shorter inputs, may fit): given up after EMBEDQ_TASK_MAX_STARTS "
        f"({settings.task_max_starts}) starts"
    )
    log.error("job %s: %s", job_id, reason)
    with session_scope() as session:
        return lifecycle.fail(session, uuid.UUID(job_id), reason, message="failed: its task kept killing its worker")


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
