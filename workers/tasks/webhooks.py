"""Webhook delivery: parse ids, then hand over to the webhooks delivery service."""

from __future__ import annotations

import uuid

from app.core.config import get_settings
from app.core.db import session_scope
from app.core.queues import TaskName
from app.webhooks.delivery import Outcome, deliver_event
from workers import metrics
from workers.celery_app import retrying_task


@retrying_task(TaskName.WEBHOOK_DELIVER)
def deliver_webhook(job_id: str, event_id: str, token: int) -> dict[str, object]:
    """Make one attempt to send event `event_id` of job `job_id`, if `token` is still the current dispatch."""
    outcome = deliver_event(session_scope, job_id, uuid.UUID(event_id), token, get_settings())
    if outcome.outcome not in (Outcome.WAITING, Outcome.STALE):
        metrics.webhook_attempted(outcome.outcome.value)
    return {
        "job_id": job_id,
        "event_id": event_id,
        "outcome": outcome.outcome.value,
        "status_code": outcome.status_code,
        "next_delay_s": outcome.next_delay_s,
    }
