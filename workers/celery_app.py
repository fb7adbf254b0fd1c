"""The Celery worker app. The parent process never imports torch; each child loads models lazily."""

from __future__ import annotations

import logging
import os
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


@signals.celeryd_after_setup.connect
def _remember_pool_size(instance: Any, **_: Any) -> None:
    # Read by each prefork child (inherited environment) to take its share of the CPU cores.
    os.environ["EMBEDQ_POOL_PROCESSES"] = str(instance.concurrency)


def _share_cpu_threads() -> None:
    """Give each prefork child its share of the cores: N children with torch's default threads oversubscribe."""
    threads = get_settings().worker_torch_threads
    if threads == 0:
        processes = max(1, int(os.environ.get("EMBEDQ_POOL_PROCESSES") or 1))
        threads = max(1, (os.cpu_count() or 1) // processes)
    import torch

    torch.set_num_threads(threads)


@signals.worker_process_init.connect
def _init_child(**_: Any) -> None:
    # The parent's pooled connections must not be shared with a forked child.
    db.reset()
    _share_cpu_threads()
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
