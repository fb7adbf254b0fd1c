"""Readiness: can this API reach Postgres and Redis, and is some worker consuming each queue?"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import redis
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

import migrations
from app.core.celery import celery_client
from app.core.config import Settings
from app.core.db import db
from app.core.queues import Queue
from app.health.children import ChildState, read_children


@dataclass
class Readiness:
    checks: dict[str, str] = field(default_factory=dict)
    queues: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return all(v == "ok" for v in self.checks.values())

    @property
    def not_ready(self) -> list[str]:
        """Return one line per failing check, naming it and what is wrong."""
        return [f"{name}: {state}" for name, state in self.checks.items() if state != "ok"]


def _database() -> str:
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}: {exc}".splitlines()[0]
    return "ok"


def _redis(settings: Settings) -> str:
    _, url = settings.require_services()
    try:
        redis.Redis.from_url(url, socket_timeout=settings.readiness_timeout_s).ping()
    except redis.RedisError as exc:
        return f"unreachable: {exc}"
    return "ok"


@cache
def _expected_heads() -> frozenset[str]:
    return frozenset(ScriptDirectory(str(Path(migrations.__file__).parent)).get_heads())


def schema_state(connection: Connection) -> str:
    """Return "ok" when the database is at the code's migration heads, else what to run."""
    current = set(MigrationContext.configure(connection).get_current_heads())
    expected = _expected_heads()
    if current == expected:
        return "ok"
    return (
        f"schema at {', '.join(sorted(current)) or 'no revision'}, this code expects "
        f"{', '.join(sorted(expected))}: run `embedq migrate`"
    )


def _migrations() -> str:
    try:
        with db.engine.connect() as conn:
            return schema_state(conn)
    except Exception as exc:
        return f"unknown: {type(exc).__name__}: {exc}".splitlines()[0]


def _queue_consumers(settings: Settings) -> dict[str, list[str]]:
    replies = celery_client().control.inspect(timeout=settings.readiness_timeout_s).active_queues() or {}
    consumers: dict[str, list[str]] = {q.value: [] for q in Queue}
    for worker, queues in replies.items():
        for q in queues:
            consumers.setdefault(q["name"], []).append(worker)
    return consumers


def _supervised(state_file: Path) -> str:
    not_running = [child.describe() for child in read_children(state_file) if child.state is not ChildState.RUNNING]
    return "; ".join(not_running) or "ok"


def readiness(settings: Settings) -> Readiness:
    """Return each dependency's state; workers are checked only when Redis answers."""
    result = Readiness()
    if settings.supervisor_state_file is not None:
        result.checks["processes"] = _supervised(settings.supervisor_state_file)
    result.checks["database"] = _database()
    if result.checks["database"] == "ok":
        result.checks["migrations"] = _migrations()
    result.checks["redis"] = _redis(settings)
    if result.checks["redis"] != "ok":
        result.checks["workers"] = "unknown: redis is unreachable"
        return result
    result.queues = _queue_consumers(settings)
    if not any(result.queues.values()):
        result.checks["workers"] = "no worker answered: start one with `embedq worker`"
    else:
        result.checks["workers"] = "ok"
        idle = sorted(q for q, workers in result.queues.items() if not workers)
        if idle:
            result.checks["queues"] = f"no worker consumes: {', '.join(idle)}"
    return result
