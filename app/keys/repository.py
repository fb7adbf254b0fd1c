"""All SQL about API keys, and the count of a key's active jobs that its concurrency limit reads."""

from __future__ import annotations

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from app.models.api_key import ApiKey
from app.models.job import ACTIVE_STATUSES, Job


class ApiKeyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, key: ApiKey) -> ApiKey:
        self.session.add(key)
        self.session.flush()
        self.session.refresh(key)
        return key

    def get(self, key_id: str) -> ApiKey | None:
        return self.session.get(ApiKey, key_id)

    def list_keys(self, *, tenant: str | None, include_revoked: bool) -> list[ApiKey]:
        query = select(ApiKey).order_by(ApiKey.tenant, ApiKey.created_at)
        if tenant is not None:
            query = query.where(ApiKey.tenant == tenant)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        return list(self.session.scalars(query))

    def revoke(self, key_id: str) -> ApiKey | None:
        """Mark a key revoked (keeping the first revocation time) and return it; None if there is no such key."""
        return self.session.scalar(
            update(ApiKey)
            .where(ApiKey.id == key_id)
            .values(revoked_at=func.coalesce(ApiKey.revoked_at, func.now()))
            .returning(ApiKey)
            .execution_options(populate_existing=True)
        )

    def lock_job_admission(self, key_id: str) -> None:
        """Serialize job admission of one key until this transaction ends, so two requests cannot both pass."""
        self.session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"embedq:jobs:{key_id}"})

    def active_jobs_of_key(self, key_id: str) -> int:
        return int(
            self.session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.api_key_id == key_id, Job.status.in_([s.value for s in ACTIVE_STATUSES]))
            )
            or 0
        )
