"""Usage per tenant over a window of job creation times: who may see whose, and the sums per tenant."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy.orm import Session

from app.core.errors import InvalidRequestError, NotFoundError
from app.core.security import Principal
from app.usage.repository import KindUsage, UsageRepository
from app.usage.schemas import TenantUsage


def tenant_usage(
    session: Session,
    principal: Principal,
    *,
    since: datetime | None,
    until: datetime | None,
    tenant: str | None,
) -> list[TenantUsage]:
    """Return the usage of the caller's tenant in [since, until); an admin gets every tenant, or ``tenant``."""
    if since is not None and until is not None and since >= until:
        raise InvalidRequestError(
            f"'from' ({since.isoformat()}) must be before 'to' ({until.isoformat()})", param="from"
        )
    if not principal.is_admin:
        if tenant is not None and tenant != principal.tenant:
            # As for any row of another tenant: it does not exist for this caller.
            raise NotFoundError(f"no tenant {tenant!r} for this API key: omit 'tenant' to see your own", param="tenant")
        tenant = principal.tenant
    rows = UsageRepository(session).by_tenant_and_kind(since=since, until=until, tenant=tenant)
    return summed(rows)


def summed(rows: Iterable[KindUsage]) -> list[TenantUsage]:
    """Return one usage entry per tenant, by tenant name, from its per-kind sums."""
    per_tenant: dict[str, list[KindUsage]] = defaultdict(list)
    for row in rows:
        per_tenant[row.tenant].append(row)
    return [
        TenantUsage(
            tenant=tenant,
            jobs=sum(r.jobs for r in kinds),
            jobs_by_kind={r.kind: r.jobs for r in kinds},
            inputs=sum(r.inputs for r in kinds),
            chunks=sum(r.chunks for r in kinds),
            tokens=sum(r.tokens for r in kinds),
            training_steps=sum(r.training_steps for r in kinds),
        )
        for tenant, kinds in sorted(per_tenant.items())
    ]
