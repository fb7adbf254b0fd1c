"""Celery configuration shared by the API's client and the workers, and the client the API sends with."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery
from kombu import Exchange
from kombu import Queue as KombuQueue

from app.core.config import Settings, get_settings
from app.core.queues import TASK_QUEUES, Queue, TaskName


def celery_config(settings: Settings) -> dict[str, Any]:
    """Return the Celery settings every embedq process agrees on."""
    _, redis_url = settings.require_services()
    transport = {
        # A message unacked and not re-stamped by its worker's heartbeat (workers/broker_heartbeat.py) for
        # this long is restored to its queue: its worker died. Live workers keep what they hold however long
        # it runs, training included. README "Reliability".
        "visibility_timeout": settings.redis_visibility_timeout_s,
        # Sweep for such messages every few seconds (kombu's defaults add up to one scan per 100 s).
        "unacked_restore_interval": settings.broker_restore_interval_s,
        "unacked_restore_throttle": 1,
        "retry_on_timeout": True,
        "health_check_interval": 10,
    }
    return {
        "broker_url": redis_url,
        "result_backend": redis_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # A lost broker connection puts back every message the consumer held, running tasks' too, and their
        # acks can no longer be sent: stop those tasks (SIGTERM to the pool child; training checkpoints first)
        # rather than let a second worker run the same batch, index build or training job beside them.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_prefetch_multiplier": 1,
        "task_send_sent_event": True,
        # Job workers turn task events on with -E (Flower's task views); the sync worker leaves them off:
        # three event publishes per request sat on its latency path (README "Synchronous API").
        "worker_send_task_events": False,
        "task_track_started": True,
        "result_expires": 3600,
        "task_default_queue": Queue.INFERENCE.value,
        # Sync requests are taken off their queue without acks: kombu then keeps no unacked record of them
        # (two Redis transactions per request on the consumer thread, which the forward pass shares the GIL
        # with). Nothing is lost that anyone waits for: a worker that dies mid-request leaves its caller a 504.
        "task_queues": [
            KombuQueue(settings.sync_queue, Exchange(settings.sync_queue), routing_key=settings.sync_queue, no_ack=True)
        ],
        "task_routes": {name.value: {"queue": queue.value} for name, queue in TASK_QUEUES.items()},
        "worker_proc_alive_timeout": settings.worker_proc_alive_timeout_s,
        # Run by `celery beat` (`embedq up` starts one); a reap nobody picked up by the next one is dropped.
        "beat_schedule": {
            TaskName.MAINTENANCE_REAP.value: {
                "task": TaskName.MAINTENANCE_REAP.value,
                "schedule": settings.reaper_interval_s,
                "options": {"expires": settings.reaper_interval_s},
            },
        },
    }


@lru_cache
def celery_client() -> Celery:
    """Return the process's Celery app for sending tasks by name (it registers no tasks)."""
    return _app("embedq")


@lru_cache
def sync_sender() -> Celery:
    """Return the process's Celery app for sync requests (``app/inference/dispatch.py``).

    It has no result backend and sends no task-sent event: the API awaits each result on its own pub/sub
    connection (``app/inference/results.py``), while Celery's Redis backend would also SUBSCRIBE and then
    UNSUBSCRIBE a blocking connection of its own to every request's result channel. Three Redis round trips
    fewer per request. The worker stores results with its own backend, as for any task.
    """
    return _app("embedq-sync", result_backend=None, task_send_sent_event=False)


def _app(name: str, **overrides: Any) -> Celery:
    app = Celery(name)
    app.conf.update({**celery_config(get_settings()), **overrides})
    return app
