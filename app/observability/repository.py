"""The SQL behind the API's gauges: jobs by kind and status, webhook events by status."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models.job import Job
from app.models.webhook import WebhookEvent


class MetricsRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def jobs_by_kind_and_status(self) -> dict[tuple[str, str], int]:
        rows = self.session.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status))
        return {(kind, status): count for kind, status, count in rows}

    def webhook_events_by_status(self) -> dict[str, int]:
        rows = self.session.execute(select(WebhookEvent.status, func.count()).group_by(WebhookEvent.status))
        return {status: count for status, count in rows}
