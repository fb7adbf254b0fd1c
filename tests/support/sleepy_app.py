"""A Celery app with embedq's configuration and broker heartbeat and one task that sleeps, for tests of what a
worker holds while a task runs (a warm shutdown, a lost broker connection) without a model or a database.

    celery -A support.sleepy_app:app worker -Q inference   # with PYTHONPATH=tests
"""

from __future__ import annotations

import time

from celery import Celery

from app.core.celery import celery_config
from app.core.config import get_settings
from workers.broker_heartbeat import UnackedHeartbeat

app = Celery("embedq-sleepy")
app.conf.update(celery_config(get_settings()))
app.steps["consumer"].add(UnackedHeartbeat)


@app.task(name="tests.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
