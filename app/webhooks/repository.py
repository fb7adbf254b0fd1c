"""All SQL about webhook endpoints, their events and the delivery log."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import case, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from app.core.security import Principal, visible_to
from app.models.job import Job
from app.models.webhook import WebhookDelivery, WebhookEndpoint, WebhookEvent, WebhookEventStatus

PENDING = WebhookEventStatus.PENDING.value
SENDING = WebhookEventStatus.SENDING.value


class WebhookRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    # Endpoints.

    def add_endpoint(self, endpoint: WebhookEndpoint) -> WebhookEndpoint:
        self.session.add(endpoint)
        self.session.flush()
        self.session.refresh(endpoint)
        return endpoint

    def get_endpoint(self, endpoint_id: uuid.UUID) -> WebhookEndpoint | None:
        return self.session.get(WebhookEndpoint, endpoint_id)

    def get_visible_endpoint(self, endpoint_id: uuid.UUID, principal: Principal) -> WebhookEndpoint | None:
        return self.session.scalar(
            select(WebhookEndpoint).where(
                WebhookEndpoint.id == endpoint_id, visible_to(principal, WebhookEndpoint.tenant)
            )
        )

    def list_endpoints(self, principal: Principal) -> list[WebhookEndpoint]:
        return list(
            self.session.scalars(
                select(WebhookEndpoint)
                .where(visible_to(principal, WebhookEndpoint.tenant))
                .order_by(WebhookEndpoint.created_at)
            )
        )

    def endpoint_for_url(self, tenant: str, url: str) -> WebhookEndpoint | None:
        """Return the tenant's newest endpoint registered for exactly ``url``, enabled ones first."""
        return self.session.scalar(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.tenant == tenant, WebhookEndpoint.url == url)
            .order_by(WebhookEndpoint.enabled.desc(), WebhookEndpoint.created_at.desc())
            .limit(1)
        )

    def lock_url(self, tenant: str, url: str) -> None:
        """Serialize, until this transaction ends, the creation of the tenant's endpoint for ``url``."""
        self.session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"embedq:webhook-url:{tenant}:{url}"}
        )

    def default_endpoints(self, tenant: str) -> list[WebhookEndpoint]:
        """Return the tenant's enabled ``all_jobs`` endpoints: every job of the tenant is delivered to them."""
        return list(
            self.session.scalars(
                select(WebhookEndpoint)
                .where(WebhookEndpoint.tenant == tenant, WebhookEndpoint.all_jobs, WebhookEndpoint.enabled)
                .order_by(WebhookEndpoint.created_at)
            )
        )

    def disable_endpoint(self, endpoint_id: uuid.UUID, reason: str) -> None:
        self.session.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id)
            .values(enabled=False, disabled_reason=reason)
        )

    def delete_endpoint(self, endpoint: WebhookEndpoint) -> None:
        self.session.delete(endpoint)
        self.session.flush()

    # Jobs, read fresh: the caller's transaction has just changed the row with a bulk UPDATE.

    def job(self, job_id: uuid.UUID) -> Job | None:
        return self.session.scalar(select(Job).where(Job.id == job_id).execution_options(populate_existing=True))

    def visible_job(self, job_id: uuid.UUID, principal: Principal) -> Job | None:
        return self.session.scalar(select(Job).where(Job.id == job_id, visible_to(principal, Job.tenant)))

    # Events.

    def add_event(self, event: WebhookEvent) -> WebhookEvent:
        self.session.add(event)
        self.session.flush()
        return event

    def add_event_once(self, event: WebhookEvent) -> bool:
        """Insert ``event`` unless one with its id exists; True if it was inserted."""
        inserted = self.session.scalar(
            pg_insert(WebhookEvent)
            .values(
                id=event.id,
                job_id=event.job_id,
                endpoint_id=event.endpoint_id,
                type=event.type,
                body=event.body,
            )
            .on_conflict_do_nothing(index_elements=[WebhookEvent.id])
            .returning(WebhookEvent.id)
        )
        return inserted is not None

    def events_of_job(self, job_id: uuid.UUID) -> list[WebhookEvent]:
        return list(
            self.session.scalars(
                select(WebhookEvent).where(WebhookEvent.job_id == job_id).order_by(WebhookEvent.created_at)
            )
        )

    def claim_event(self, event_id: uuid.UUID, token: int, lease: timedelta) -> WebhookEvent | None:
        """Mark a due event as being sent and return it; None if the token is stale or it is not due.

        An event left ``sending`` by a worker that died is claimable again once its lease ran out.
        """
        now = func.now()
        return self.session.scalar(
            update(WebhookEvent)
            .where(
                WebhookEvent.id == event_id,
                WebhookEvent.dispatch_token == token,
                WebhookEvent.next_attempt_at <= now,
                or_(
                    WebhookEvent.status == PENDING,
                    (WebhookEvent.status == SENDING) & (WebhookEvent.locked_until < now),
                ),
            )
            .values(status=SENDING, locked_until=now + lease, attempts=WebhookEvent.attempts + 1)
            .returning(WebhookEvent)
            .execution_options(populate_existing=True)
        )

    def seconds_until_due(self, event_id: uuid.UUID, token: int) -> float | None:
        """Return how long until the event with this current token can be claimed (database clock), else None.

        A pending event waits for its next attempt; one being sent waits for its lease, which runs out only
        if the worker sending it died.
        """
        due_at = case((WebhookEvent.status == SENDING, WebhookEvent.locked_until), else_=WebhookEvent.next_attempt_at)
        remaining = self.session.scalar(
            select(func.extract("epoch", due_at - func.now())).where(
                WebhookEvent.id == event_id,
                WebhookEvent.dispatch_token == token,
                WebhookEvent.status.in_([PENDING, SENDING]),
            )
        )
        return None if remaining is None else max(float(remaining), 0.0)

    def settle_event(self, event_id: uuid.UUID, token: int, *, status: WebhookEventStatus, error: str | None) -> bool:
        """Record the final status of the current dispatch; False if a redelivery superseded it."""
        result = self.session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == event_id, WebhookEvent.dispatch_token == token)
            .values(status=status.value, locked_until=None, last_error=error)
        )
        return result.rowcount == 1

    def schedule_retry(self, event_id: uuid.UUID, token: int, *, delay_s: float, error: str | None) -> bool:
        """Make the event pending again ``delay_s`` from now under the next token; False if superseded."""
        result = self.session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == event_id, WebhookEvent.dispatch_token == token)
            .values(
                status=PENDING,
                locked_until=None,
                last_error=error,
                next_attempt_at=func.now() + timedelta(seconds=delay_s),
                retry_index=WebhookEvent.retry_index + 1,
                dispatch_token=token + 1,
            )
        )
        return result.rowcount == 1

    def restart_event(self, event_id: uuid.UUID) -> int:
        """Queue the event to be sent again from the start of the retry schedule; return its new token."""
        return self.session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == event_id)
            .values(
                status=PENDING,
                locked_until=None,
                retry_index=0,
                next_attempt_at=func.now(),
                dispatch_token=WebhookEvent.dispatch_token + 1,
            )
            .returning(WebhookEvent.dispatch_token)
            .execution_options(synchronize_session=False)
        ).scalar_one()

    def refresh_event(self, event: WebhookEvent) -> WebhookEvent:
        self.session.refresh(event)
        return event

    # The delivery log.

    def add_delivery(self, delivery: WebhookDelivery) -> None:
        self.session.add(delivery)
        self.session.flush()

    def deliveries_of_job(self, job_id: uuid.UUID) -> list[tuple[WebhookDelivery, WebhookEvent]]:
        rows = self.session.execute(
            select(WebhookDelivery, WebhookEvent)
            .join(WebhookEvent, WebhookDelivery.event_id == WebhookEvent.id)
            .where(WebhookEvent.job_id == job_id)
            .order_by(WebhookDelivery.id)
        )
        return [(delivery, event) for delivery, event in rows]
