"""Engine, sessions and the task outbox: tasks are sent only after the transaction that made their rows commits."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy
from sqlalchemy import Engine, event
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app.core.config import get_settings
from app.core.queues import TASK_QUEUES, TaskName

log = logging.getLogger(__name__)

_OUTBOX = "embedq_outbox"


class Base(DeclarativeBase):
    """Declarative base of every embedq table."""


@dataclass(frozen=True)
class PendingTask:
    name: TaskName
    args: tuple[Any, ...]
    priority: int | None = None


class _Db:
    """The engine and session factory of this process, rebuilt after a fork."""

    def __init__(self) -> None:
        self._pid: int | None = None
        self._engine: Engine | None = None
        self._factory: sessionmaker[Session] | None = None

    def factory(self) -> sessionmaker[Session]:
        if self._factory is None or self._pid != os.getpid():
            database_url, _ = get_settings().require_services()
            # Looked up now, not imported by name: tracing (app/observability/tracing.py) wraps it when on.
            self._engine = sqlalchemy.create_engine(database_url, pool_pre_ping=True, pool_size=10, max_overflow=20)
            self._factory = sessionmaker(self._engine, expire_on_commit=False)
            self._pid = os.getpid()
        return self._factory

    @property
    def engine(self) -> Engine:
        self.factory()
        assert self._engine is not None
        return self._engine

    def reset(self) -> None:
        """Forget the inherited engine without closing the parent's sockets (call in a forked child)."""
        if self._engine is not None and self._pid != os.getpid():
            self._engine.dispose(close=False)
        self._engine = self._factory = self._pid = None


db = _Db()


def enqueue(session: Session, name: TaskName, *args: Any, priority: int | None = None) -> None:
    """Buffer a task to be sent once ``session`` commits; dropped if it rolls back.

    ``priority``: kombu's Redis priority step (0 is taken first; ``app/jobs/fairness.py``), None for the default.
    """
    session.info.setdefault(_OUTBOX, []).append(PendingTask(name, args, priority))


@event.listens_for(Session, "after_commit")
def _send_outbox(session: Session) -> None:
    pending: list[PendingTask] = session.info.pop(_OUTBOX, [])
    if not pending:
        return
    from app.core.celery import celery_client

    client = celery_client()
    for task in pending:
        # Job state lives in Postgres: no result to wait for, so no result subscription that a Redis outage
        # would turn into a RuntimeError instead of the broker's OperationalError.
        client.send_task(
            task.name.value,
            args=list(task.args),
            queue=TASK_QUEUES[task.name].value,
            ignore_result=True,
            priority=task.priority,
        )


@event.listens_for(Session, "after_rollback")
def _drop_outbox(session: Session) -> None:
    session.info.pop(_OUTBOX, None)


# What worker-side services take to open their own short transactions: session_scope, or a test's.
Scope = Callable[[], AbstractContextManager[Session]]


@contextmanager
def session_scope() -> Iterator[Session]:
    """Yield a session committed on success and rolled back on error."""
    session = db.factory()()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    else:
        # Outside the except: sending the outbox fails after the commit, with nothing left to roll back,
        # and its error (Redis down) must surface as itself (a 503), not as a failed rollback.
        session.commit()
    finally:
        session.close()


def get_session() -> Iterator[Session]:
    """FastAPI dependency: one session per request, committed (then its tasks sent) or rolled back."""
    with session_scope() as session:
        yield session
