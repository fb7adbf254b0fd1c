"""Fair queues: the priority each job batch is sent at follows its own tenant's backlog (in-process, real Postgres)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.db import PendingTask
from app.core.security import Principal
from app.jobs.fairness import batch_priorities, priority_for
from app.jobs.schemas import EmbeddingJobCreate
from app.jobs.service import create_embedding_job


def test_the_priority_steps_widen_fourfold() -> None:
    assert [priority_for(n, 1) for n in (0, 1, 4, 5, 20, 21, 10_000)] == [0, 3, 3, 6, 6, 9, 9]
    assert [priority_for(n, 2) for n in (0, 1, 2, 9, 10, 41, 42)] == [0, 0, 3, 3, 6, 6, 9]


def submit(session: Session, settings: Settings, tenant: str, inputs: int) -> list[int | None]:
    """Return the priorities of the batches a new job sends (taken from the outbox: nothing reaches Redis)."""
    payload = EmbeddingJobCreate(input=[f"text {i}" for i in range(inputs)], model="m")
    create_embedding_job(session, payload, settings, Principal(tenant, is_admin=False, key_id=None))
    outbox: list[PendingTask] = session.info.pop("embedq_outbox", [])
    return [task.priority for task in outbox]


def test_a_tenant_with_nothing_waiting_goes_first_whatever_another_has_waiting(
    db_session: Session, monkeypatch
) -> None:
    monkeypatch.setattr("app.jobs.service.check_embedding_model", lambda *a, **k: None)
    settings = Settings(job_batch_size=2, fair_queue_share_batches=1)
    assert submit(db_session, settings, "big", 20) == [0, 3, 3, 3, 3, 6, 6, 6, 6, 6]
    assert submit(db_session, settings, "small", 4) == [0, 3]
    assert submit(db_session, settings, "big", 2) == [6]  # 10 of its batches wait already
    assert batch_priorities(db_session, "big", settings, 1) == [6]
    assert batch_priorities(db_session, "big", settings, 1, counted=True) == [6]
    assert batch_priorities(db_session, "nobody", settings, 2) == [0, 3]


def test_with_fair_queues_off_every_batch_goes_at_the_default_priority(db_session: Session, monkeypatch) -> None:
    monkeypatch.setattr("app.jobs.service.check_embedding_model", lambda *a, **k: None)
    settings = Settings(job_batch_size=2, fair_queues=False)
    assert submit(db_session, settings, "big", 6) == [None, None, None]
