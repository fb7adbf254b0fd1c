"""Request and response bodies of webhook endpoints and of a job's delivery log, and the event payload."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, AnyHttpUrl, BaseModel, ConfigDict, Field

from app.core.config import get_settings
from app.core.errors import EmbedqError
from app.models.webhook import WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.webhooks.ssrf import check_url


def _guarded(url: AnyHttpUrl) -> AnyHttpUrl:
    try:
        check_url(str(url), get_settings().webhook_allowed_cidrs)
    except EmbedqError as exc:
        raise ValueError(exc.message) from exc
    return url


WebhookUrl = Annotated[
    AnyHttpUrl,
    AfterValidator(_guarded),
    Field(description="http(s) URL whose host resolves to public addresses (or EMBEDQ_WEBHOOK_ALLOWED_CIDRS)"),
]
"""A job's ``webhook_url``: http(s) only, refused (422) when its host resolves to a non-public address."""


class EndpointCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"url": "https://example.com/hooks/embedq"}]}
    )

    url: AnyHttpUrl
    description: Annotated[str | None, Field(max_length=500)] = None
    all_jobs: bool = Field(
        default=False,
        description="a default endpoint of your tenant: receives the events of every job of the tenant, including "
        "jobs that name no webhook_url",
    )


class EndpointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(default=None, description="true re-enables an endpoint disabled by a 410")
    description: Annotated[str | None, Field(max_length=500)] = None
    all_jobs: bool | None = None


class SecretRotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_seconds: Annotated[float | None, Field(ge=0, le=30 * 86400)] = Field(
        default=None, description="how long the old secret still signs [default: EMBEDQ_WEBHOOK_SECRET_OVERLAP_S]"
    )


class EndpointOut(BaseModel):
    id: uuid.UUID
    url: str
    description: str | None
    all_jobs: bool
    auto_created: bool = Field(description="created for a job's webhook_url that no endpoint had registered")
    enabled: bool
    disabled_reason: str | None
    previous_secret_expires_at: datetime | None = Field(description="until then the old secret signs too")
    created_at: datetime

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> EndpointOut:
        return cls(
            id=endpoint.id,
            url=endpoint.url,
            description=endpoint.description,
            all_jobs=endpoint.all_jobs,
            auto_created=endpoint.auto_created,
            enabled=endpoint.enabled,
            disabled_reason=endpoint.disabled_reason,
            previous_secret_expires_at=endpoint.previous_secret_expires_at,
            created_at=endpoint.created_at,
        )


class EndpointWithSecret(EndpointOut):
    secret: str = Field(description="the whsec_ signing secret: shown only in this response, store it")


class EndpointList(BaseModel):
    data: list[EndpointOut]


class DeliveryOut(BaseModel):
    """One attempt to send one event."""

    id: int
    event_id: str = Field(description="the webhook-id header; the same for every attempt of an event")
    event_type: str
    endpoint_id: uuid.UUID
    attempt: int
    url: str
    address: str | None = Field(description="the IP address connected to")
    status_code: int | None
    succeeded: bool
    response_body: str | None = Field(description="the start of the response body")
    error: str | None
    duration_ms: float
    created_at: datetime

    @classmethod
    def of(cls, delivery: WebhookDelivery, event: WebhookEvent) -> DeliveryOut:
        return cls(
            id=delivery.id,
            event_id=event.message_id,
            event_type=event.type,
            endpoint_id=event.endpoint_id,
            attempt=delivery.attempt,
            url=delivery.url,
            address=delivery.address,
            status_code=delivery.status_code,
            succeeded=delivery.succeeded,
            response_body=delivery.response_body,
            error=delivery.error,
            duration_ms=delivery.duration_ms,
            created_at=delivery.created_at,
        )


class EventOut(BaseModel):
    """The state of one event: delivered, being retried, or given up."""

    id: str
    type: str
    endpoint_id: uuid.UUID
    status: str
    attempts: int
    next_attempt_at: datetime | None = Field(description="when the next retry is due, while pending")
    last_error: str | None

    @classmethod
    def of(cls, event: WebhookEvent) -> EventOut:
        pending = event.status == "pending"
        return cls(
            id=event.message_id,
            type=event.type,
            endpoint_id=event.endpoint_id,
            status=event.status,
            attempts=event.attempts,
            next_attempt_at=event.next_attempt_at if pending else None,
            last_error=event.last_error,
        )


class DeliveryLog(BaseModel):
    job_id: uuid.UUID
    events: list[EventOut]
    data: list[DeliveryOut] = Field(description="every attempt, oldest first")


class Redelivery(BaseModel):
    job_id: uuid.UUID
    events: list[EventOut] = Field(description="the events queued to be sent again")
