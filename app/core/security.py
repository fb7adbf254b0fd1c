"""API-key check: `Authorization: Bearer <key>` when EMBEDQ_API_KEYS is set."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.core.config import Settings, get_settings

_bearer = HTTPBearer(auto_error=False, description="an API key from EMBEDQ_API_KEYS")


def require_api_key(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> None:
    """Let the request through if auth is off or it carries a configured key; else 401."""
    if not settings.api_keys:
        return
    given = credentials.credentials if credentials else ""
    if not any(hmac.compare_digest(given, key) for key in settings.api_keys):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or unknown API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
