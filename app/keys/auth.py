"""The FastAPI dependencies of auth: the caller's ``Principal`` from their bearer key, and the rate limit.

Every router but health and the dashboard's pages depends on ``current_principal``; routes that read or
change tenant-owned rows take it too (FastAPI resolves it once per request) and hand it to the services.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from app.core.config import Settings
from app.core.db import session_scope
from app.core.deps import SettingsDep
from app.core.errors import TooManyRequestsError
from app.core.security import Principal
from app.keys.rate_limit import hit_rate_limit
from app.keys.service import authenticate
from app.models.api_key import DEFAULT_TENANT

_bearer = HTTPBearer(
    auto_error=False, description="a key from `embedq keys create` (eq_...), or one of EMBEDQ_API_KEYS"
)


def _limit(own: int | None, default: int) -> int:
    return default if own is None else own


def _unauthorized(settings: Settings) -> HTTPException:
    hint = (
        ""
        if settings.api_keys
        else "; create one with `embedq keys create --tenant T`, or set EMBEDQ_API_KEYS (EMBEDQ_AUTH_DISABLED=true "
        "turns auth off)"
    )
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=f"missing or unknown API key: send `Authorization: Bearer <key>`{hint}",
        headers={"WWW-Authenticate": "Bearer"},
    )


def static_principal(presented: str | None, settings: Settings) -> Principal | None:
    """Return who ``presented`` is when that needs no database: anyone when auth is off, an EMBEDQ_API_KEYS key."""
    defaults = {
        "max_concurrent_jobs": settings.default_max_concurrent_jobs,
        "requests_per_minute": settings.default_requests_per_minute,
    }
    if settings.auth_disabled:
        return Principal(DEFAULT_TENANT, is_admin=True, key_id=None, **defaults)
    if not presented:
        return None
    given = presented.encode()
    for n, key in enumerate(settings.api_keys):
        if hmac.compare_digest(given, key.encode()):
            return Principal(DEFAULT_TENANT, is_admin=True, key_id=f"env:{n}", **defaults)
    return None


def stored_key_principal(presented: str, settings: Settings) -> Principal | None:
    """Return whose key from `embedq keys create` ``presented`` is; None for an unknown or revoked one."""
    with session_scope() as session:
        row = authenticate(session, presented)
    if row is None:
        return None
    return Principal(
        row.tenant,
        is_admin=row.is_admin,
        key_id=row.id,
        max_concurrent_jobs=_limit(row.max_concurrent_jobs, settings.default_max_concurrent_jobs),
        requests_per_minute=_limit(row.requests_per_minute, settings.default_requests_per_minute),
    )


async def optional_principal(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    settings: SettingsDep,
) -> Principal | None:
    """Return the caller, or None when they sent no key or one that is unknown or revoked."""
    presented = credentials.credentials if credentials else None
    # Only a key from `embedq keys create` needs the database, hence a thread; the rest is answered here.
    principal = static_principal(presented, settings)
    if principal is None and presented:
        principal = await run_in_threadpool(stored_key_principal, presented, settings)
    return principal


OptionalPrincipalDep = Annotated[Principal | None, Depends(optional_principal)]


async def current_principal(principal: OptionalPrincipalDep, settings: SettingsDep) -> Principal:
    """Return the caller, or answer 401 (with how to get a key) when the key is missing, unknown or revoked."""
    if principal is None:
        raise _unauthorized(settings)
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]

# OpenAPI responses of the two dependencies, and of creating a job over the key's concurrency limit.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: {"description": "missing, unknown or revoked API key"}}
RATE_LIMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    429: {
        "description": "the key's requests per minute are used up: retry after Retry-After seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}
JOB_LIMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    429: {"description": "the key has max_concurrent_jobs queued or running jobs already"}
}


async def rate_limited(principal: PrincipalDep, settings: SettingsDep) -> Principal:
    """Return the caller once their key has a request left in the last minute; else 429 with ``Retry-After``."""
    await charge_rate_limit(principal, settings)
    return principal


async def charge_rate_limit(principal: Principal, settings: Settings) -> None:
    """Count one request against the key's requests per minute, or raise a 429 with ``Retry-After``.

    For routes that spend model time on some requests only (a search with a ``query``, not a ``vector``).
    """
    limit = principal.requests_per_minute
    if limit > 0:
        _, redis_url = settings.require_services()
        retry_after = await run_in_threadpool(hit_rate_limit, redis_url, principal.key_id or "anonymous", limit)
        if retry_after is not None:
            raise TooManyRequestsError(
                f"this API key made {limit} requests in the last minute, its limit on the synchronous endpoints: retry "
                f"in {retry_after} s, or ask for a higher limit (`embedq keys create --rpm N`)",
                retry_after_s=retry_after,
            )
