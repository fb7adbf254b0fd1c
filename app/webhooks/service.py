"""Webhook endpoints (create, rotate, enable), the events a job owes them, and the delivery log.

A job owes an event when it finishes (``job.succeeded``, ``job.failed``, ``job.cancelled``) and, if it
asked with ``progress_milestones``, a ``job.progress`` event as its progress first reaches each milestone.
A batch's job also owes ``batch.completed``, ``batch.failed``, ``batch.cancelled`` or ``batch.expired``
(``notify_job_event``) when the batch ends.

How a job finds its endpoints: a job's ``webhook_url`` is matched to the endpoint registered with the
same URL (``POST /webhook-endpoints``, which returns the signing secret once). A URL nobody registered
gets an endpoint created when the first event is due, marked ``auto_created``; its secret was never
shown, so obtain one with ``POST /webhook-endpoints/{id}/rotate-secret``. Endpoints with ``all_jobs`` are
their tenant's default endpoints: they receive the events of every job of that tenant, with or without a
``webhook_url``. Endpoints belong to the tenant of the key that made them (or of the job, when auto-created);
another tenant gets 404 for them.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.db import enqueue
from app.core.errors import ConflictError, NotFoundError
from app.core.queues import TaskName
from app.core.security import Principal
from app.models.job import Job, JobStatus
from app.models.webhook import WebhookEndpoint, WebhookEvent, WebhookEventStatus
from app.webhooks.repository import WebhookRepository
from app.webhooks.schemas import (
    DeliveryLog,
    DeliveryOut,
    EndpointCreate,
    EndpointUpdate,
    EventOut,
    Redelivery,
)
from app.webhooks.signing import new_secret
from app.webhooks.ssrf import check_url, loggable_url

log = logging.getLogger(__name__)

PROGRESS_EVENT = "job.progress"


def create_endpoint(
    session: Session, payload: EndpointCreate, settings: Settings, principal: Principal
) -> tuple[WebhookEndpoint, str]:
    """Return a new endpoint of the caller's tenant and its secret, once the URL passed the SSRF guard."""
    url = str(payload.url)
    check_url(url, settings.webhook_allowed_cidrs, reveal_addresses=principal.is_admin)
    secret = new_secret()
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        tenant=principal.tenant,
        url=url,
        description=payload.description,
        secret=secret,
        all_jobs=payload.all_jobs,
    )
    return WebhookRepository(session).add_endpoint(endpoint), secret


def get_endpoint(session: Session, endpoint_id: uuid.UUID, principal: Principal) -> WebhookEndpoint:
    """Return the endpoint if ``principal`` may see it; another tenant's is a 404."""
    endpoint = WebhookRepository(session).get_visible_endpoint(endpoint_id, principal)
    if endpoint is None:
        raise NotFoundError(f"no webhook endpoint with id {endpoint_id}", param="endpoint_id")
    return endpoint


def list_endpoints(session: Session, principal: Principal) -> list[WebhookEndpoint]:
    return WebhookRepository(session).list_endpoints(principal)


def update_endpoint(
    session: Session, endpoint_id: uuid.UUID, payload: EndpointUpdate, principal: Principal
) -> WebhookEndpoint:
    """Return the endpoint with the given fields changed; enabling it clears why it was disabled."""
    endpoint = get_endpoint(session, endpoint_id, principal)
    if payload.enabled is not None:
        endpoint.enabled = payload.enabled
        endpoint.disabled_reason = None if payload.enabled else "disabled by request"
    if payload.description is not None:
        endpoint.description = payload.description
    if payload.all_jobs is not None:
        endpoint.all_jobs = payload.all_jobs
    session.flush()
    return endpoint


def rotate_secret(
    session: Session, endpoint_id: uuid.UUID, overlap_s: float | None, settings: Settings, principal: Principal
) -> tuple[WebhookEndpoint, str]:
    """Return the endpoint and its new secret; the old one keeps signing alongside for the overlap."""
    endpoint = get_endpoint(session, endpoint_id, principal)
    overlap = settings.webhook_secret_overlap_s if overlap_s is None else overlap_s
    secret = new_secret()
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = datetime.now(UTC) + timedelta(seconds=overlap)
    endpoint.secret = secret
    session.flush()
    return endpoint, secret


def delete_endpoint(session: Session, endpoint_id: uuid.UUID, principal: Principal) -> None:
    """Delete an endpoint with its events and their delivery log."""
    WebhookRepository(session).delete_endpoint(get_endpoint(session, endpoint_id, principal))


def event_body(job: Job, status: JobStatus, settings: Settings) -> str:
    """Return the JSON event for a job that reached ``status``: its state and links, never its vectors."""
    return _event(f"job.{status.value}", _job_data(job, status, settings))


def progress_event_body(job: Job, milestone: int, settings: Settings) -> str:
    """Return the ``job.progress`` event for a job whose progress reached ``milestone`` percent."""
    data = _job_data(job, JobStatus(job.status), settings)
    data["milestone"] = milestone
    return _event(PROGRESS_EVENT, data)


def _event(event_type: str, data: dict[str, Any]) -> str:
    event = {"type": event_type, "timestamp": datetime.now(UTC).isoformat(), "data": data}
    return json.dumps(event, separators=(",", ":"))


def _job_data(job: Job, status: JobStatus, settings: Settings) -> dict[str, Any]:
    base = (settings.public_url or "").rstrip("/")
    links = {"self": f"{base}/jobs/{job.id}", "webhook_deliveries": f"{base}/jobs/{job.id}/webhook-deliveries"}
    if job.kind == "embeddings":
        links["results"] = f"{base}/jobs/{job.id}/results"
    return {
        "id": str(job.id),
        "kind": job.kind,
        "status": status.value,
        "model": job.model,
        "counts": {"total": job.total, "done": job.done, "failed": job.failed},
        "progress": job.progress,
        "message": job.message,
        "error": job.error,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "links": links,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _endpoints_for(repo: WebhookRepository, job: Job) -> list[WebhookEndpoint]:
    endpoints: list[WebhookEndpoint] = []
    if job.webhook_url:
        endpoint = repo.endpoint_for_url(job.tenant, job.webhook_url)
        if endpoint is None:
            # Jobs naming the same new URL may finish at once: the first creates its endpoint, and the others,
            # waiting for the lock until it commits, find that one.
            repo.lock_url(job.tenant, job.webhook_url)
            endpoint = repo.endpoint_for_url(job.tenant, job.webhook_url)
        if endpoint is None:
            endpoint = repo.add_endpoint(
                WebhookEndpoint(
                    id=uuid.uuid4(), tenant=job.tenant, url=job.webhook_url, secret=new_secret(), auto_created=True
                )
            )
            log.info("created webhook endpoint %s for %s (job %s)", endpoint.id, loggable_url(job.webhook_url), job.id)
        endpoints.append(endpoint)
    seen = {e.id for e in endpoints}
    endpoints += [e for e in repo.default_endpoints(job.tenant) if e.id not in seen]
    return endpoints


def notify_job_finished(session: Session, job_id: uuid.UUID, status: JobStatus, settings: Settings) -> int:
    """Record the event this terminal status owes each endpoint and queue it after commit; return how many."""
    repo = WebhookRepository(session)
    job = repo.job(job_id)
    if job is None:
        return 0
    endpoints = _endpoints_for(repo, job)
    if not endpoints:
        return 0
    body = event_body(job, status, settings)
    for endpoint in endpoints:
        event = WebhookEvent(
            id=uuid.uuid4(), job_id=job.id, endpoint_id=endpoint.id, type=f"job.{status.value}", body=body
        )
        if endpoint.enabled:
            repo.add_event(event)
            enqueue(session, TaskName.WEBHOOK_DELIVER, str(job.id), str(event.id), 0)
        else:
            # Kept so the log shows why nothing was sent, and a redelivery can send it once re-enabled.
            event.status = WebhookEventStatus.FAILED.value
            event.last_error = f"endpoint disabled: {endpoint.disabled_reason}"
            repo.add_event(event)
    return len(endpoints)


def notify_job_progress(session: Session, job_id: uuid.UUID, reached: list[int], settings: Settings) -> int:
    """Record a ``job.progress`` event per milestone in ``reached`` for each enabled endpoint; return how many new.

    Called with every milestone reached so far, after every progress update: each event's id is derived from
    (job, endpoint, milestone), so a redelivered batch or a repeated report records and queues nothing twice.
    """
    if not reached:
        return 0
    repo = WebhookRepository(session)
    job = repo.job(job_id)
    if job is None:
        return 0
    bodies = {milestone: progress_event_body(job, milestone, settings) for milestone in reached}
    added = 0
    for endpoint in _endpoints_for(repo, job):
        if not endpoint.enabled:
            continue
        for milestone, body in bodies.items():
            added += _record_once(session, repo, job, endpoint, PROGRESS_EVENT, body, f"{PROGRESS_EVENT}:{milestone}")
    return added


def notify_job_event(
    session: Session, job_id: uuid.UUID, event_type: str, data: dict[str, Any], settings: Settings
) -> int:
    """Record a domain event of a job (``batch.completed``, ...) for each enabled endpoint; return how many new.

    The event's id is derived from (job, type, endpoint): announcing it again records and queues nothing.
    """
    repo = WebhookRepository(session)
    job = repo.job(job_id)
    if job is None:
        return 0
    body = _event(event_type, data)
    added = 0
    for endpoint in _endpoints_for(repo, job):
        if not endpoint.enabled:
            continue
        added += _record_once(session, repo, job, endpoint, event_type, body, event_type)
    return added


def _record_once(
    session: Session,
    repo: WebhookRepository,
    job: Job,
    endpoint: WebhookEndpoint,
    event_type: str,
    body: Any,
    key: str,
) -> bool:
    """Return whether an event was recorded (and its delivery queued); its id comes from (job, key, endpoint)."""
    event_id = uuid.uuid5(job.id, f"{key}:{endpoint.id}")
    event = WebhookEvent(id=event_id, job_id=job.id, endpoint_id=endpoint.id, type=event_type, body=body)
    if not repo.add_event_once(event):
        return False
    enqueue(session, TaskName.WEBHOOK_DELIVER, str(job.id), str(event.id), 0)
    return True


def _require_job(repo: WebhookRepository, job_id: uuid.UUID, principal: Principal) -> Job:
    job = repo.visible_job(job_id, principal)
    if job is None:
        raise NotFoundError(f"no job with id {job_id}", param="job_id")
    return job


def delivery_log(session: Session, job_id: uuid.UUID, principal: Principal) -> DeliveryLog:
    """Return a job's webhook events and every attempt to send them, oldest first."""
    repo = WebhookRepository(session)
    _require_job(repo, job_id, principal)
    return DeliveryLog(
        job_id=job_id,
        events=[EventOut.of(e) for e in repo.events_of_job(job_id)],
        data=[DeliveryOut.of(d, e) for d, e in repo.deliveries_of_job(job_id)],
    )


def redeliver(session: Session, job_id: uuid.UUID, principal: Principal) -> Redelivery:
    """Queue every event of a job again (same webhook-id, fresh retry schedule) to its enabled endpoints."""
    repo = WebhookRepository(session)
    _require_job(repo, job_id, principal)
    events = repo.events_of_job(job_id)
    if not events:
        raise ConflictError(
            f"job {job_id} has no webhook events: it has not finished, or it names no webhook_url and no "
            "endpoint has all_jobs"
        )
    queued: list[WebhookEvent] = []
    disabled: set[str] = set()
    for event in events:
        endpoint = repo.get_endpoint(event.endpoint_id)
        if endpoint is None or not endpoint.enabled:
            disabled.add(str(event.endpoint_id))
            continue
        token = repo.restart_event(event.id)
        enqueue(session, TaskName.WEBHOOK_DELIVER, str(job_id), str(event.id), token)
        queued.append(repo.refresh_event(event))
    if not queued:
        raise ConflictError(
            f"every endpoint of job {job_id}'s events is disabled ({', '.join(sorted(disabled))}): re-enable "
            'one with PATCH /webhook-endpoints/{id} {"enabled": true}, then redeliver',
            disabled_endpoints=sorted(disabled),
        )
    return Redelivery(job_id=job_id, events=[EventOut.of(e) for e in queued])
