"""API keys: who may call the API, for which tenant, with which limits. Only a hash of each secret is kept."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Index, Integer, String, func
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base

# The tenant of keys from EMBEDQ_API_KEYS, of requests when auth is off, and of rows made before tenants.
DEFAULT_TENANT = "default"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class ApiKey(Base):
    """One key ``eq_<id>_<secret>``: ``id`` is looked up, the secret is compared by its SHA-256.

    A tenant is the name its keys carry; it needs no row of its own. ``max_concurrent_jobs`` and
    ``requests_per_minute`` override the global defaults when set; 0 means unlimited.
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_api_keys_tenant", "tenant"),)
