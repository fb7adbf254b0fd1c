"""All SQL about training runs and their pairs (the aliases they register: ``app.catalog.repository``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from app.core.security import Principal, visible_to
from app.models.job import ACTIVE_STATUSES, Job, JobKind
from app.models.training import TrainingPair, TrainingRun
from app.training.pairs import Pair

TRAINING_KINDS = (JobKind.FINE_TUNE.value, JobKind.FINE_TUNE_LORA.value)
_INSERT_CHUNK = 5000


class TrainingRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, run: TrainingRun, pairs: Sequence[Pair]) -> None:
        """Insert a job's training run and its pairs (the job's row is ``app.jobs.lifecycle``'s to insert)."""
        self.session.add(run)
        self.session.flush()
        rows = [
            {"job_id": run.job_id, "idx": i, "query": p.query, "positive": p.positive, "negative": p.negative}
            for i, p in enumerate(pairs)
        ]
        for start in range(0, len(rows), _INSERT_CHUNK):
            self.session.execute(insert(TrainingPair), rows[start : start + _INSERT_CHUNK])

    def get_run(self, job_id: uuid.UUID) -> TrainingRun | None:
        return self.session.get(TrainingRun, job_id)

    def get_training_job(self, job_id: uuid.UUID, principal: Principal) -> tuple[Job, TrainingRun] | None:
        """Return the training job and its run if ``principal`` may see the job, else None."""
        row = self.session.execute(
            select(Job, TrainingRun)
            .join(TrainingRun, TrainingRun.job_id == Job.id)
            .where(Job.id == job_id, visible_to(principal, Job.tenant))
        ).first()
        return (row[0], row[1]) if row is not None else None

    def pairs(self, job_id: uuid.UUID) -> list[Pair]:
        rows = self.session.execute(
            select(TrainingPair.query, TrainingPair.positive, TrainingPair.negative)
            .where(TrainingPair.job_id == job_id)
            .order_by(TrainingPair.idx)
        )
        return [Pair(q, p, n) for q, p, n in rows]

    def job_status(self, job_id: uuid.UUID) -> str | None:
        return self.session.scalar(select(Job.status).where(Job.id == job_id))

    def active_job_for_alias(self, alias: str) -> Job | None:
        """Return a queued or running training job that will register ``alias`` (a dry run registers none)."""
        return self.session.scalar(
            select(Job)
            .join(TrainingRun, TrainingRun.job_id == Job.id)
            .where(
                TrainingRun.alias == alias,
                Job.status.in_([s.value for s in ACTIVE_STATUSES]),
                func.coalesce(TrainingRun.hyperparams["dry_run"].as_boolean(), False).is_(False),
            )
            .limit(1)
        )

    def job_params(self, job_id: uuid.UUID) -> dict[str, Any]:
        """Return a job's ``params``; call after ``JobRepository.record_progress`` (its update holds the row lock)."""
        return dict(self.session.scalar(select(Job.params).where(Job.id == job_id)) or {})

    def update_run(self, job_id: uuid.UUID, **values: Any) -> None:
        self.session.execute(update(TrainingRun).where(TrainingRun.job_id == job_id).values(**values))

    def set_eval(self, job_id: uuid.UUID, key: str, metrics: dict[str, Any]) -> None:
        """Merge ``{key: metrics}`` into the run's evaluation (only the job's one worker writes it)."""
        current = self.session.scalar(select(TrainingRun.eval).where(TrainingRun.job_id == job_id)) or {}
        self.update_run(job_id, eval={**current, key: metrics})
