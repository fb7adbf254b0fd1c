"""Sending one webhook event: claim it, check the address, POST it signed, log the attempt, decide what next.

The policy: a 2xx is success; a 410 disables the endpoint; any other answer, a timeout or a connection
error is retried after the next delay of EMBEDQ_WEBHOOK_RETRY_SCHEDULE_S (with jitter), or after the
receiver's ``Retry-After`` on 429 and 503; once the schedule is used up the event has failed. Redirects
are not followed. A URL the SSRF guard refuses at send time fails at once: retrying will not fix it.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum

import httpx

from app.core.celery import celery_client
from app.core.config import Settings
from app.core.db import Scope
from app.core.queues import TASK_QUEUES, TaskName
from app.models.webhook import WebhookDelivery, WebhookEndpoint, WebhookEventStatus
from app.webhooks.deadline import DeadlineTransport
from app.webhooks.repository import WebhookRepository
from app.webhooks.signing import signed_headers
from app.webhooks.ssrf import (
    CheckedTarget,
    Resolver,
    UnsafeWebhookUrlError,
    WebhookHostUnresolvedError,
    check_url,
    loggable_url,
)
from app.webhooks.ssrf import resolve_host as default_resolver

log = logging.getLogger(__name__)

RESPONSE_EXCERPT_BYTES = 2048
USER_AGENT = "embedq-webhooks/0.1"
# Longer than any attempt can take, so a live attempt is never claimed twice.
_LEASE_MARGIN_S = 30.0

Dispatch = Callable[[str, str, int, float, Settings], None]
"""(job id, event id, token, delay in seconds, settings): send the task for the event's next attempt."""


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    FAILED = "failed"
    WAITING = "waiting"
    STALE = "stale"


@dataclass(frozen=True)
class AttemptResult:
    """What one HTTP attempt gave."""

    address: str | None = None
    status_code: int | None = None
    response_body: str | None = None
    error: str | None = None
    retry_after_s: float | None = None
    refused: bool = False
    duration_ms: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class DeliveryOutcome:
    outcome: Outcome
    status_code: int | None = None
    next_delay_s: float | None = None


@dataclass(frozen=True)
class _Claimed:
    endpoint_id: uuid.UUID
    url: str
    message_id: str
    body: str
    secrets: list[str]
    attempt: int
    retry_index: int


def send_delivery_task(job_id: str, event_id: str, token: int, delay_s: float, settings: Settings) -> None:
    """Queue the event's next attempt; a long delay is covered in hops of EMBEDQ_WEBHOOK_MAX_COUNTDOWN_S."""
    name = TaskName.WEBHOOK_DELIVER
    celery_client().send_task(
        name.value,
        args=[job_id, event_id, token],
        queue=TASK_QUEUES[name].value,
        countdown=max(0.0, min(delay_s, settings.webhook_max_countdown_s)),
    )


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """Return the secrets that sign now: the current one, and the previous one during its overlap."""
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > now:
        return [endpoint.secret, endpoint.previous_secret]
    return [endpoint.secret]


def pinned_request(target: CheckedTarget, headers: dict[str, str], body: str) -> httpx.Request:
    """Return a POST to the checked address that still names the original host (Host header and TLS SNI)."""
    extensions = {"sni_hostname": target.url.host} if target.url.scheme == "https" else {}
    return httpx.Request(
        "POST",
        target.url.copy_with(host=target.address),
        headers={**headers, "host": target.url.netloc.decode("ascii")},
        content=body.encode(),
        extensions=extensions,
    )


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Return the seconds a ``Retry-After`` header asks to wait (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def retry_delay(attempt: AttemptResult, retry_index: int, settings: Settings, rng: random.Random) -> float | None:
    """Return seconds until the next attempt, or None when the schedule is used up."""
    schedule = settings.webhook_retry_schedule_s
    if retry_index >= len(schedule):
        return None
    if attempt.status_code in (429, 503) and attempt.retry_after_s is not None:
        return min(attempt.retry_after_s, settings.webhook_retry_after_max_s)
    jitter = settings.webhook_retry_jitter
    return schedule[retry_index] * (1 + rng.uniform(-jitter, jitter))


def _read_excerpt(response: httpx.Response, deadline: float) -> str:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= RESPONSE_EXCERPT_BYTES or time.monotonic() > deadline:
            break
    return b"".join(chunks)[:RESPONSE_EXCERPT_BYTES].decode("utf-8", errors="replace")


def send_attempt(
    claimed: _Claimed, settings: Settings, client: httpx.Client, resolve: Resolver = default_resolver
) -> AttemptResult:
    """Check the URL's addresses again, POST the signed event to the checked address, and report."""
    started = time.monotonic()

    def elapsed_ms() -> float:
        return (time.monotonic() - started) * 1000

    try:
        target = check_url(claimed.url, settings.webhook_allowed_cidrs, resolve)
    except UnsafeWebhookUrlError as exc:
        return AttemptResult(error=f"refused: {exc.message}", refused=True, duration_ms=elapsed_ms())
    except WebhookHostUnresolvedError as exc:
        return AttemptResult(error=exc.message, duration_ms=elapsed_ms())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        **signed_headers(claimed.secrets, claimed.message_id, int(time.time()), claimed.body),
    }
    request = pinned_request(target, headers, claimed.body)
    try:
        response = client.send(request, stream=True, follow_redirects=False)
        try:
            excerpt = _read_excerpt(response, started + settings.webhook_timeout_s)
        finally:
            response.close()
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return AttemptResult(address=target.address, error=error, duration_ms=elapsed_ms())
    error = None
    if response.is_redirect:
        error = f"redirect to {response.headers.get('location')!r} not followed: register the final URL"
    elif not response.is_success:
        error = f"receiver answered {response.status_code}"
    return AttemptResult(
        address=target.address,
        status_code=response.status_code,
        response_body=excerpt,
        error=error,
        retry_after_s=parse_retry_after(response.headers.get("retry-after"), datetime.now(UTC)),
        duration_ms=elapsed_ms(),
    )


def _claim(scope: Scope, event_id: uuid.UUID, token: int, settings: Settings) -> _Claimed | DeliveryOutcome:
    lease = timedelta(seconds=settings.webhook_timeout_s + _LEASE_MARGIN_S)
    with scope() as session:
        repo = WebhookRepository(session)
        event = repo.claim_event(event_id, token, lease)
        if event is None:
            remaining = repo.seconds_until_due(event_id, token)
            if remaining is None:
                return DeliveryOutcome(Outcome.STALE)
            return DeliveryOutcome(Outcome.WAITING, next_delay_s=remaining)
        endpoint = repo.get_endpoint(event.endpoint_id)
        if endpoint is None or not endpoint.enabled:
            reason = endpoint.disabled_reason if endpoint else "deleted"
            repo.settle_event(event.id, token, status=WebhookEventStatus.FAILED, error=f"endpoint disabled: {reason}")
            return DeliveryOutcome(Outcome.FAILED)
        return _Claimed(
            endpoint_id=endpoint.id,
            url=endpoint.url,
            message_id=event.message_id,
            body=event.body,
            secrets=signing_secrets(endpoint, datetime.now(UTC)),
            attempt=event.attempts,
            retry_index=event.retry_index,
        )


def _record(
    scope: Scope,
    eid: uuid.UUID,
    token: int,
    claimed: _Claimed,
    result: AttemptResult,
    settings: Settings,
    rng: random.Random,
) -> DeliveryOutcome:
    with scope() as session:
        repo = WebhookRepository(session)
        repo.add_delivery(
            WebhookDelivery(
                event_id=eid,
                attempt=claimed.attempt,
                url=claimed.url,
                address=result.address,
                status_code=result.status_code,
                response_body=result.response_body,
                error=result.error,
                duration_ms=result.duration_ms,
                succeeded=result.succeeded,
            )
        )
        if result.succeeded:
            repo.settle_event(eid, token, status=WebhookEventStatus.SUCCEEDED, error=None)
            return DeliveryOutcome(Outcome.SUCCEEDED, result.status_code)
        if result.status_code == 410:
            reason = f"the receiver answered 410 Gone at {datetime.now(UTC).isoformat(timespec='seconds')}"
            repo.disable_endpoint(claimed.endpoint_id, reason)
            log.warning("webhook endpoint %s disabled: %s", claimed.endpoint_id, reason)
            repo.settle_event(eid, token, status=WebhookEventStatus.FAILED, error=f"endpoint disabled: {reason}")
            return DeliveryOutcome(Outcome.FAILED, 410)
        delay = None if result.refused else retry_delay(result, claimed.retry_index, settings, rng)
        if delay is None:
            error = result.error if result.refused else f"gave up after {claimed.attempt} attempts: {result.error}"
            repo.settle_event(eid, token, status=WebhookEventStatus.FAILED, error=error)
            return DeliveryOutcome(Outcome.FAILED, result.status_code)
        if not repo.schedule_retry(eid, token, delay_s=delay, error=result.error):
            return DeliveryOutcome(Outcome.STALE, result.status_code)
        return DeliveryOutcome(Outcome.RETRYING, result.status_code, next_delay_s=delay)


def deliver_event(
    scope: Scope,
    job_id: str,
    event_id: uuid.UUID,
    token: int,
    settings: Settings,
    *,
    dispatch: Dispatch = send_delivery_task,
    resolve: Resolver = default_resolver,
    transport: httpx.BaseTransport | None = None,
    rng: random.Random | None = None,
) -> DeliveryOutcome:
    """Make one attempt to send an event if ``token`` is current and it is due; queue what comes next.

    Two short transactions around the HTTP call, so no row stays locked while a receiver is slow.
    A task that arrives early (a long delay is covered in hops) only re-queues itself.
    """
    claimed = _claim(scope, event_id, token, settings)
    if isinstance(claimed, DeliveryOutcome):
        if claimed.outcome is Outcome.WAITING and claimed.next_delay_s is not None:
            dispatch(job_id, str(event_id), token, claimed.next_delay_s, settings)
        return claimed
    # The attempt's whole time, not only each read's: a receiver dripping header lines kept a worker for ever.
    transport = transport or DeadlineTransport(time.monotonic() + settings.webhook_timeout_s)
    with httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False, transport=transport) as client:
        result = send_attempt(claimed, settings, client, resolve)
    outcome = _record(scope, event_id, token, claimed, result, settings, rng or random.Random())
    log.info(
        "webhook %s attempt %d to %s: %s%s",
        claimed.message_id,
        claimed.attempt,
        loggable_url(claimed.url),
        outcome.outcome.value,
        f" ({result.error})" if result.error else "",
    )
    if outcome.outcome is Outcome.RETRYING and outcome.next_delay_s is not None:
        dispatch(job_id, str(event_id), token + 1, outcome.next_delay_s, settings)
    return outcome
