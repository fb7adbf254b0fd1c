"""Maintenance tasks, run on the ``maintenance`` queue; ``maintenance.reap`` is scheduled by celery beat."""

from __future__ import annotations

from dataclasses import asdict

import redis

from app.core.config import get_settings
from app.core.db import session_scope
from app.core.queues import Queue, TaskName
from app.maintenance.broker import job_ids_in_broker
from app.maintenance.service import reap
from workers.celery_app import celery_app


@celery_app.task(name=TaskName.MAINTENANCE_REAP.value)
def reap_lost_jobs() -> dict[str, object]:
    """Re-enqueue or fail the active jobs whose tasks were lost; returns what was done."""
    settings = get_settings()
    _, redis_url = settings.require_services()
    client = redis.Redis.from_url(redis_url)
    try:
        report = reap(session_scope, settings, lambda names: job_ids_in_broker(client, tuple(Queue), names))
    finally:
        client.close()
    return asdict(report)
