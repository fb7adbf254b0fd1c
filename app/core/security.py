"""Who is calling: the ``Principal`` every route receives, and the SQL filter that keeps tenants apart."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, true
from sqlalchemy.orm import InstrumentedAttribute


@dataclass(frozen=True)
class Principal:
    """The caller: their tenant, whether they are an admin (who sees every tenant), and their key's limits.

    ``key_id`` is the ``api_keys`` id, ``env:<n>`` for the n-th EMBEDQ_API_KEYS key, or None when auth is off.
    Limits are resolved already (the key's own, else the global default); 0 means no limit.
    """

    tenant: str
    is_admin: bool
    key_id: str | None
    max_concurrent_jobs: int = 0
    requests_per_minute: int = 0

    def sees(self, tenant: str) -> bool:
        """Return True if a row of ``tenant`` is visible to this caller."""
        return self.is_admin or tenant == self.tenant


def visible_to(principal: Principal, tenant_column: InstrumentedAttribute[str]) -> ColumnElement[bool]:
    """Return the WHERE clause that limits a query to rows the caller may see (every row for an admin)."""
    return true() if principal.is_admin else tenant_column == principal.tenant
