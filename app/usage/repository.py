"""The SQL of usage: the jobs table (and training runs) summed per tenant and kind. It only reads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app.models.job import Job, JobKind
from app.models.training import TrainingRun

# Kinds whose done and failed counters count inputs (texts or documents); training counts steps instead.
_INPUT_KINDS = (JobKind.EMBEDDINGS.value, JobKind.INGEST.value, JobKind.REEMBED.value)


@dataclass(frozen=True)
class KindUsage:
    """What one tenant's jobs of one kind used."""

    tenant: str
    kind: str
    jobs: int
    inputs: int
    chunks: int
    tokens: int
    training_steps: int


class UsageRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def by_tenant_and_kind(
        self, *, since: datetime | None = None, until: datetime | None = None, tenant: str | None = None
    ) -> list[KindUsage]:
        """Return the sums of the jobs created in [since, until) per tenant and kind (of ``tenant`` only, if given)."""
        inputs = case((Job.kind.in_(_INPUT_KINDS), Job.done + Job.failed), else_=0)
        query = (
            select(
                Job.tenant,
                Job.kind,
                func.count(),
                func.coalesce(func.sum(inputs), 0),
                func.coalesce(func.sum(Job.chunks_done), 0),
                func.coalesce(func.sum(Job.tokens), 0),
                func.coalesce(func.sum(TrainingRun.step), 0),
            )
            .outerjoin(TrainingRun, TrainingRun.job_id == Job.id)
            .group_by(Job.tenant, Job.kind)
            .order_by(Job.tenant, Job.kind)
        )
        if since is not None:
            query = query.where(Job.created_at >= since)
        if until is not None:
            query = query.where(Job.created_at < until)
        if tenant is not None:
            query = query.where(Job.tenant == tenant)
        return [KindUsage(t, k, *(int(v) for v in rest)) for t, k, *rest in self.session.execute(query)]
