"""Fair queues: the priority a job batch is sent at, from how much work its tenant has waiting already.

Every tenant's batches share the ``inference`` and ``bulk`` queues, and a Redis queue is a FIFO: a 16-input
job sent after another tenant's 20,000-chunk ingest would wait for all of it. kombu keeps a Redis queue as
one list per priority step (0, 3, 6, 9; a worker takes from 0 first, across all its queues), so each batch is
sent at a step chosen by the backlog of its own tenant when it is sent: a tenant's first
EMBEDQ_FAIR_QUEUE_SHARE_BATCHES waiting batches go at 0, the next 4 times as many at 3, the next 16 times as
many at 6, the rest at 9. A tenant with little waiting thus overtakes one with much waiting; two tenants with
huge backlogs share step 9 in arrival order. The backlog is read from the jobs table (inputs or documents
not done yet), so nothing has to be counted up and down beside it, and nothing drifts when a worker dies.
Why priorities rather than a queue per tenant or a scheduler in Postgres: docs/operations/tenants.md.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.jobs.repository import JobRepository

# kombu's Redis priority steps (kombu.transport.redis.PRIORITY_STEPS); on Redis a lower step is taken first.
PRIORITY_STEPS = (0, 3, 6, 9)
# How many times more batches each step holds than the one before it.
_GROWTH = 4


def priority_for(ahead: int, share: int) -> int:
    """Return the priority step of a batch with ``ahead`` batches of its tenant waiting before it."""
    bound = 0
    width = share
    for step in PRIORITY_STEPS[:-1]:
        bound += width
        if ahead < bound:
            return step
        width *= _GROWTH
    return PRIORITY_STEPS[-1]


def batch_priorities(
    session: Session, tenant: str, settings: Settings, batches: int, *, counted: bool = False
) -> list[int | None]:
    """Return the priority of each of ``batches`` batches ``tenant`` is about to send (None: fair queues off).

    ``counted``: the job's counts include these batches already (else they are written after this call).
    """
    if not settings.fair_queues:
        return [None] * batches
    backlog = JobRepository(session).backlog_batches(
        tenant, embedding_batch=settings.job_batch_size, ingest_batch=settings.ingest_batch_documents
    )
    ahead = max(0, backlog - batches) if counted else backlog
    return [priority_for(ahead + n, settings.fair_queue_share_batches) for n in range(batches)]
