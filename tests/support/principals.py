"""The callers that in-process service tests act as."""

from __future__ import annotations

from app.core.security import Principal

# The default tenant's admin: what every caller is when auth is off.
ADMIN = Principal("default", is_admin=True, key_id=None)
