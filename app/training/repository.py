"""All SQL about training runs and their pairs (the aliases they register: ``app.catalog.repository``)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from app.core.security import Principal, visible_to
from app.models.job import ACTIVE_STATUSES, Job, JobKind, JobStatus
from app.models.training import TrainingPair, TrainingRun
from app.training.pairs import Pair

TRAINING_KINDS = (JobKind.FINE_TUNE.value, JobKind.FINE_TUNE_LORA.value)
_INSERT_CHUNK = 5000


class TrainingRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, job: Job, run: TrainingRun, pairs: Sequence[Pair]) -> None:
        self.session.add(job)
        self.session.flush()
        self.session.add(run)
        self.session.flush()
        rows = [
            {"job_id": job.id, "idx": i, "query": p.query, "positive": p.positive, "negative": p.negative}
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
        """Return a queued or running training job that will register ``alias``, if any."""
        return self.session.scalar(
            select(Job)
            .join(TrainingRun, TrainingRun.job_id == Job.id)
            .where(TrainingRun.alias == alias, Job.status.in_([s.value for s in ACTIVE_STATUSES]))
            .limit(1)
        )

    def record_progress(
        self, job_id: uuid.UUID, *, values: dict[str, Any], progress: float, total: int, message: str
    ) -> bool:
        """Store a running job's step, loss and ETA; False (nothing written) if it is no longer running."""
        updated = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
            .values(progress=progress, done=values["step"], total=total, message=message)
        )
        if updated.rowcount != 1:
            return False
        self.session.execute(update(TrainingRun).where(TrainingRun.job_id == job_id).values(**values))
        return True

    def job_params(self, job_id: uuid.UUID) -> dict[str, Any]:
        """Return a job's ``params``; call after ``record_progress``, whose update holds the row's lock."""
        return dict(self.session.scalar(select(Job.params).where(Job.id == job_id)) or {})

    def set_job_params(self, job_id: uuid.UUID, params: dict[str, Any]) -> None:
        self.session.execute(update(Job).where(Job.id == job_id).values(params=params))

    def update_run(self, job_id: uuid.UUID, **values: Any) -> None:
        self.session.execute(update(TrainingRun).where(TrainingRun.job_id == job_id).values(**values))

    def set_eval(self, job_id: uuid.UUID, key: str, metrics: dict[str, Any]) -> None:
        """Merge ``{key: metrics}`` into the run's evaluation (only the job's one worker writes it)."""
        current = self.session.scalar(select(TrainingRun.eval).where(TrainingRun.job_id == job_id)) or {}
        self.update_run(job_id, eval={**current, key: metrics})

    def touch_job(self, job_id: uuid.UUID, message: str) -> None:
        """Set a running job's message (and so its ``updated_at``, the reaper's heartbeat)."""
        self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
            .values(message=message, updated_at=func.now())
        )
