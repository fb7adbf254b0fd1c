"""API keys: create (the raw key is shown once), list, revoke, and authenticate a presented key.

A key reads ``eq_<id>_<secret>``: the id finds the row, and the secret is compared, in constant time, with
the SHA-256 stored for it. A plain SHA-256 is enough because the secret is 256 random bits, not a password:
nobody can search that space, so the slow, salted hashes made for guessable passwords would only add a
hundred milliseconds to every request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.errors import InvalidRequestError, NotFoundError, TooManyRequestsError
from app.core.security import Principal
from app.keys.rate_limit import hit_rate_limit
from app.keys.repository import ApiKeyRepository
from app.models.api_key import TENANT_PATTERN, ApiKey

KEY_PREFIX = "eq"
_KEY_SHAPE = re.compile(r"^eq_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_tenant(tenant: str) -> str:
    """Return the tenant name if it is valid, else raise a 422 saying what a name may hold."""
    if not re.match(TENANT_PATTERN, tenant):
        raise InvalidRequestError(
            f"invalid tenant {tenant[:80]!r}: use 1-64 lowercase letters, digits, '_' or '-', starting with a "
            "letter or digit",
            param="tenant",
        )
    return tenant


def create_key(
    session: Session,
    *,
    tenant: str,
    is_admin: bool = False,
    name: str | None = None,
    max_concurrent_jobs: int | None = None,
    requests_per_minute: int | None = None,
) -> tuple[ApiKey, str]:
    """Return a new key's row and the raw key, which is stored nowhere and cannot be shown again."""
    for label, value in (("max_concurrent_jobs", max_concurrent_jobs), ("requests_per_minute", requests_per_minute)):
        if value is not None and value < 0:
            raise InvalidRequestError(f"{label} must be >= 0 (0: no limit), got {value}", param=label)
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(
        id=key_id,
        tenant=check_tenant(tenant),
        name=name,
        secret_sha256=_digest(secret),
        is_admin=is_admin,
        max_concurrent_jobs=max_concurrent_jobs,
        requests_per_minute=requests_per_minute,
    )
    return ApiKeyRepository(session).add(key), f"{KEY_PREFIX}_{key_id}_{secret}"


def list_keys(session: Session, *, tenant: str | None = None, include_revoked: bool = False) -> list[ApiKey]:
    """Return the keys (of one tenant, if given), by tenant then age; revoked ones only if asked."""
    return ApiKeyRepository(session).list_keys(tenant=tenant, include_revoked=include_revoked)


def revoke_key(session: Session, key_id: str) -> ApiKey:
    """Revoke a key at once (its next request gets 401) and return it; revoking twice is harmless."""
    key = ApiKeyRepository(session).revoke(key_id)
    if key is None:
        raise NotFoundError(f"no API key with id {key_id!r}: `embedq keys list` shows them", param="key_id")
    return key


def authenticate(session: Session, presented: str) -> ApiKey | None:
    """Return the live key whose secret matches ``presented``; None for malformed, unknown or revoked keys."""
    shape = _KEY_SHAPE.match(presented)
    if shape is None:
        return None
    key_id, secret = shape.groups()
    key = ApiKeyRepository(session).get(key_id)
    if key is None or key.revoked_at is not None:
        return None
    return key if hmac.compare_digest(_digest(secret), key.secret_sha256) else None


def admit_job(session: Session, principal: Principal, settings: Settings) -> None:
    """Let the caller's key start one more job, or raise 429: it has ``max_concurrent_jobs`` active already, or
    it used up its ``requests_per_minute`` (a job counts as one request, as a synchronous request does).

    The concurrency check holds a per-key lock until the transaction that inserts the job commits, so
    concurrent requests cannot both take the last slot.
    """
    _check_concurrency(session, principal)
    _charge_requests_per_minute(principal, settings)


def _charge_requests_per_minute(principal: Principal, settings: Settings) -> None:
    limit = principal.requests_per_minute
    if limit <= 0:
        return
    _, redis_url = settings.require_services()
    retry_after = hit_rate_limit(redis_url, principal.key_id or "anonymous", limit)
    if retry_after is not None:
        raise TooManyRequestsError(
            f"this API key made {limit} requests in the last minute, its limit on jobs and synchronous requests: retry "
            f"in {retry_after} s, or ask for a higher limit (`embedq keys create --rpm N`)",
            retry_after_s=retry_after,
        )


def _check_concurrency(session: Session, principal: Principal) -> None:
    if not hold_admission(session, principal):
        return
    assert principal.key_id is not None
    limit = principal.max_concurrent_jobs
    active = ApiKeyRepository(session).active_jobs_of_key(principal.key_id)
    if active >= limit:
        raise TooManyRequestsError(
            f"this API key has {active} queued or running jobs, its limit (max_concurrent_jobs={limit}): wait for "
            "one to finish or cancel one, then submit again",
            active_jobs=active,
            max_concurrent_jobs=limit,
        )


def hold_admission(session: Session, principal: Principal) -> bool:
    """Take the caller's key's job-admission lock until the transaction ends; False if the key has no limit.

    ``admit_job`` takes it itself. Take it before ``admit_job`` to look up what a concurrent request of the
    same key may have committed while this one waited: an earlier job with the same idempotency key.
    """
    if principal.max_concurrent_jobs <= 0 or principal.key_id is None:
        return False
    ApiKeyRepository(session).lock_job_admission(principal.key_id)
    return True
