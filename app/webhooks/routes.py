"""HTTP routes of webhook endpoints and of a job's webhook delivery log."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.core.deps import SessionDep, SettingsDep
from app.keys.auth import PrincipalDep
from app.webhooks import service
from app.webhooks.schemas import (
    DeliveryLog,
    EndpointCreate,
    EndpointList,
    EndpointOut,
    EndpointUpdate,
    EndpointWithSecret,
    Redelivery,
    SecretRotation,
)

router = APIRouter(tags=["webhooks"])

# scope="function": commit (and send the outbox) before the response goes out.


@router.post("/webhook-endpoints", status_code=status.HTTP_201_CREATED, response_model=EndpointWithSecret)
def create_endpoint(
    payload: EndpointCreate, session: SessionDep, settings: SettingsDep, principal: PrincipalDep, response: Response
) -> EndpointWithSecret:
    """Register a receiver URL; the response carries its `whsec_` signing secret, shown only this once."""
    endpoint, secret = service.create_endpoint(session, payload, settings, principal)
    response.headers["Location"] = f"/webhook-endpoints/{endpoint.id}"
    return EndpointWithSecret(**EndpointOut.of(endpoint).model_dump(), secret=secret)


@router.get("/webhook-endpoints", response_model=EndpointList)
def list_endpoints(session: SessionDep, principal: PrincipalDep) -> EndpointList:
    """List your tenant's endpoints (every tenant's for an admin key), oldest first; secrets are never listed."""
    return EndpointList(data=[EndpointOut.of(e) for e in service.list_endpoints(session, principal)])


@router.get("/webhook-endpoints/{endpoint_id}", response_model=EndpointOut)
def get_endpoint(endpoint_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> EndpointOut:
    """Return one endpoint, including why it was disabled if it was."""
    return EndpointOut.of(service.get_endpoint(session, endpoint_id, principal))


@router.patch("/webhook-endpoints/{endpoint_id}", response_model=EndpointOut)
def update_endpoint(
    endpoint_id: uuid.UUID, payload: EndpointUpdate, session: SessionDep, principal: PrincipalDep
) -> EndpointOut:
    """Enable or disable an endpoint (e.g. after it answered 410), or change its description or `all_jobs`."""
    return EndpointOut.of(service.update_endpoint(session, endpoint_id, payload, principal))


@router.delete("/webhook-endpoints/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_endpoint(endpoint_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> None:
    """Delete an endpoint, its pending events and their delivery log."""
    service.delete_endpoint(session, endpoint_id, principal)


@router.post("/webhook-endpoints/{endpoint_id}/rotate-secret", response_model=EndpointWithSecret)
def rotate_secret(
    endpoint_id: uuid.UUID,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    payload: SecretRotation | None = None,
) -> EndpointWithSecret:
    """Replace the signing secret; events are signed with both old and new until the overlap ends."""
    overlap = payload.overlap_seconds if payload else None
    endpoint, secret = service.rotate_secret(session, endpoint_id, overlap, settings, principal)
    return EndpointWithSecret(**EndpointOut.of(endpoint).model_dump(), secret=secret)


@router.get("/jobs/{job_id}/webhook-deliveries", response_model=DeliveryLog)
def job_deliveries(job_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> DeliveryLog:
    """Return the job's webhook events and one row per attempt to send them (status, response, error, time)."""
    return service.delivery_log(session, job_id, principal)


@router.post(
    "/jobs/{job_id}/webhook-deliveries/redeliver", status_code=status.HTTP_202_ACCEPTED, response_model=Redelivery
)
def redeliver(job_id: uuid.UUID, session: SessionDep, principal: PrincipalDep) -> Redelivery:
    """Send the job's events again, with the same `webhook-id`, to endpoints that are enabled."""
    return service.redeliver(session, job_id, principal)
