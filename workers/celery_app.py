"""The Celery worker app. The parent process never imports torch; each child loads models lazily."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from app.core.celery import celery_config
from app.core.config import get_settings
from app.core.db import db
from workers import observability
from workers.broker_heartbeat import UnackedHeartbeat

log = logging.getLogger(__name__)

celery_app = Celery(
    "embedq",
    include=[
        "workers.tasks.embed",
        "workers.tasks.maintenance",
        "workers.tasks.infer",
        "workers.tasks.webhooks",
        "workers.tasks.train",
        "workers.tasks.ingest",
    ],
)
celery_app.conf.update(celery_config(get_settings()))
celery_app.steps["consumer"].add(UnackedHeartbeat)
observability.connect()


@signals.worker_process_init.connect
def _init_child(**_: Any) -> None:
    # The parent's pooled connections must not be shared with a forked child.
    db.reset()
    preload = get_settings().preload_models
    if preload:
        from workers.runtime.registry import get_encoder

        for name in preload:
            get_encoder(name)
            log.info("preloaded model %s", name)


@signals.worker_process_shutdown.connect
def _shutdown_child(**_: Any) -> None:
    # Withdraw this process's model load records (GET /v1/models) instead of leaving them to expire.
    import sys

    registry = sys.modules.get("workers.runtime.registry")
    if registry is not None:
        registry.unload_all()
