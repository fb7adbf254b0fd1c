"""/readyz names what is not ready: an unmigrated database, and queues no worker consumes."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.core.queues import Queue
from app.health import service as health
from app.main import create_app


def test_a_database_behind_the_code_is_named_with_the_fix(db_session: Session) -> None:
    connection = db_session.connection()
    assert health.schema_state(connection) == "ok"
    connection.execute(text("DELETE FROM alembic_version"))
    connection.execute(text("INSERT INTO alembic_version (version_num) VALUES ('0001')"))
    state = health.schema_state(connection)
    assert state.startswith("schema at 0001") and "embedq migrate" in state


def test_queues_without_a_consumer_are_named(clean_state, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand in for the answer of Celery's inspect(): one worker consuming only the inference queue.
    only_inference = {q.value: (["w1@host"] if q is Queue.INFERENCE else []) for q in Queue}
    monkeypatch.setattr(health, "_queue_consumers", lambda settings: only_inference)
    r = TestClient(create_app()).get("/readyz")
    body = r.json()
    assert r.status_code == 503 and not body["ready"]
    assert body["checks"]["database"] == body["checks"]["migrations"] == body["checks"]["redis"] == "ok"
    [line] = body["not_ready"]
    assert line.startswith("queues: no worker consumes:") and Queue.TRAINING.value in line
    assert Queue.INFERENCE.value not in line.split(":", 2)[2].split(", ")
