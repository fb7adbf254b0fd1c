"""GET /usage: what each tenant used, read from Postgres (billing does not depend on scraping metrics)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from app.core.deps import SessionDep
from app.keys.auth import PrincipalDep
from app.usage import service
from app.usage.schemas import UsageReport

router = APIRouter(tags=["usage"])


@router.get("/usage", response_model=UsageReport, response_model_by_alias=True)
def get_usage(
    session: SessionDep,
    principal: PrincipalDep,
    since: Annotated[datetime | None, Query(alias="from", description="jobs created at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(alias="to", description="jobs created before (ISO 8601)")] = None,
    tenant: Annotated[str | None, Query(description="admins: one tenant only (default: every tenant)")] = None,
) -> UsageReport:
    """Return jobs, inputs, chunks, tokens and training steps of your tenant's jobs created in [from, to).

    An admin key sees every tenant (or `tenant`). A bound without a time zone is read as UTC.
    """
    since, until = _utc(since), _utc(until)
    data = service.tenant_usage(session, principal, since=since, until=until, tenant=tenant)
    return UsageReport(since=since, until=until, data=data)


def _utc(moment: datetime | None) -> datetime | None:
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment
