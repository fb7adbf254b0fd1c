"""Maintenance tasks, run on the ``maintenance`` queue; ``maintenance.reap`` is scheduled by celery beat."""

from __future__ import annotations

from dataclasses import asdict

import redis

from app.artifacts.store import ArtifactStore
from app.batches.files import delete_expired
from app.core.config import get_settings
from app.core.db import session_scope
from app.core.queues import Queue, TaskName
from app.maintenance.broker import job_ids_in_broker
from app.maintenance.service import reap
from workers.celery_app import celery_app

# Expired Files API files deleted per run (a backlog goes in later runs).
EXPIRED_FILES_PER_RUN = 500


@celery_app.task(name=TaskName.MAINTENANCE_REAP.value)
def reap_lost_jobs() -> dict[str, object]:
    """Re-enqueue or fail the active jobs whose tasks were lost, and delete expired files; returns what was done."""
    settings = get_settings()
    _, redis_url = settings.require_services()
    client = redis.Redis.from_url(redis_url)
    try:
        report = reap(session_scope, settings, lambda names: job_ids_in_broker(client, tuple(Queue), names))
    finally:
        client.close()
    expired = delete_expired(session_scope, ArtifactStore.from_settings(settings), EXPIRED_FILES_PER_RUN)
    return {**asdict(report), "expired_files": expired}
