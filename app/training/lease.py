"""One process trains a job at a time: a Postgres session-level advisory lock, held while it trains.

A training message can reach a second worker while the first still runs it: the broker put it back (a
heartbeat that stalled past the visibility timeout, a restore the first worker's ack then missed), and a
running job may be claimed again (a worker killed mid-run must be resumable). Two GPUs would then train the
same job into one checkpoint folder. The lock is tied to a connection that stays open for the whole run, so
it goes with the process: a killed worker's connection closes and the job is free for the redelivery.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from app.core.db import Scope

_KEY = "SELECT hashtextextended(:k, 0)"


@contextmanager
def training_lease(scope: Scope, job_id: uuid.UUID) -> Iterator[bool]:
    """Yield True while this process holds ``job_id``'s training lease; False if another process holds it."""
    with scope() as session:
        engine = session.get_bind().engine  # an Engine's is itself; a Connection's (a test's outer transaction) its own
    key = {"k": f"embedq:training:{job_id}"}
    # Autocommit: the lock outlives transactions, and no transaction stays open (and holds back vacuum) for hours.
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        held = bool(conn.scalar(text(f"SELECT pg_try_advisory_lock(({_KEY}))"), key))
        try:
            yield held
        finally:
            if held:
                conn.scalar(text(f"SELECT pg_advisory_unlock(({_KEY}))"), key)
