"""Who may read ``GET /metrics``: admin keys, and the scrape token EMBEDQ_METRICS_TOKEN.

Admin-only rather than tenant-scoped: the metrics are the operator's view of the whole service (job and
webhook counts of every tenant, queue depths, request rates by route, the process's memory). Scoping each
series to a tenant would multiply them by the tenants and still show the shared queues; a tenant has its
own jobs through ``GET /jobs``. Prometheus gets in with the token, sent as ``Authorization: Bearer``.
With auth off (EMBEDQ_AUTH_DISABLED) every caller is an admin, as everywhere else.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.core.deps import SettingsDep
from app.keys.auth import current_principal, optional_principal

_bearer = HTTPBearer(auto_error=False, description="an admin key, or EMBEDQ_METRICS_TOKEN")


async def metrics_reader(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    settings: SettingsDep,
) -> None:
    """Return when the caller may read the metrics; else 401 (no or unknown key) or 403 (a tenant's key)."""
    token = settings.metrics_token
    if token and credentials and hmac.compare_digest(credentials.credentials.encode(), token.encode()):
        return
    principal = await current_principal(await optional_principal(credentials, settings), settings)
    if not principal.is_admin:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail="GET /metrics shows every tenant's jobs: read it with an admin key, or with EMBEDQ_METRICS_TOKEN "
            "as the bearer token (for Prometheus)",
        )
