"""Worker metrics: every pool child records into prometheus_client's multiprocess files; the parent serves them.

One scrape target per worker node, ``http://<host>:EMBEDQ_WORKER_METRICS_PORT/metrics``, summing its
children (0 turns it off). Before the pool forks, the parent points ``PROMETHEUS_MULTIPROC_DIR`` at a
fresh directory (unless the operator set one), so the children write there; a child that exits is marked
dead so its live gauges (resident models) drop out. Nothing is pushed anywhere and no Redis round trip is
added to a batch.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from functools import cache
from typing import TYPE_CHECKING, Any

from app.core.config import Settings

if TYPE_CHECKING:
    from workers.runtime.encoder import Encoder

log = logging.getLogger(__name__)

_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_LOAD_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
_state: dict[str, Any] = {"owned_dir": None, "loaded": set(), "resident": set()}


def start_server(settings: Settings) -> None:
    """In the worker parent, before the pool forks: pick the multiprocess directory and serve /metrics."""
    if settings.worker_metrics_port == 0:
        return
    if _DIR_ENV not in os.environ:
        directory = tempfile.mkdtemp(prefix="embedq-worker-metrics-")
        os.environ[_DIR_ENV] = directory
        _state["owned_dir"] = directory
    from prometheus_client import CollectorRegistry, start_http_server, values
    from prometheus_client.multiprocess import MultiProcessCollector

    # The celery command imported prometheus_client (through Flower's plugin) before the directory was
    # set: pick the value class again, so metrics the children create write to the shared files.
    values.ValueClass = values.get_value_class()

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    try:
        # On the API's interface (127.0.0.1 under `embedq up`), never on every interface by default.
        start_http_server(settings.worker_metrics_port, addr=settings.api_host, registry=registry)
    except OSError as exc:
        log.warning(
            "worker metrics not served: port %d: %s (set EMBEDQ_WORKER_METRICS_PORT to a free port, or 0)",
            settings.worker_metrics_port,
            exc,
        )
        return
    log.info("worker metrics on %s:%d/metrics", settings.api_host, settings.worker_metrics_port)


def child_exited(pid: int) -> None:
    """Drop a finished pool child's live gauges."""
    if _DIR_ENV in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def stop_server() -> None:
    """Remove the multiprocess directory this worker created."""
    directory = _state["owned_dir"]
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


@cache
def _metrics() -> dict[str, Any]:
    # Created on first use, in the child, after the fork: their files are then named by the child's pid.
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "batch": Histogram("embedq_worker_batch_inputs", "Texts per encode call", ["model"], buckets=_BATCH_BUCKETS),
        "tokens": Counter("embedq_worker_tokens", "Tokens encoded", ["model"]),
        "seconds": Counter("embedq_worker_encode_seconds", "Seconds spent encoding", ["model"]),
        "tokens_per_second": Gauge(
            "embedq_worker_tokens_per_second",
            "Throughput of the last encode call, per pool child",
            ["model"],
            multiprocess_mode="liveall",
        ),
        "load": Histogram(
            "embedq_worker_model_load_seconds",
            "Seconds to load a model, warm-up included",
            ["model"],
            buckets=_LOAD_BUCKETS,
        ),
        "resident": Gauge(
            "embedq_worker_resident_models",
            "Pool children holding the model in memory",
            ["model"],
            multiprocess_mode="livesum",
        ),
        "tasks": Counter("embedq_worker_tasks", "Tasks finished, by task name and state", ["task", "state"]),
        "store_outages": Counter(
            "embedq_worker_store_outages", "Task runs sent back because an S3 or HTTP store did not answer", ["task"]
        ),
        "given_up": Counter(
            "embedq_worker_tasks_given_up", "Tasks given up after EMBEDQ_TASK_MAX_STARTS deadly starts", ["task"]
        ),
        "webhooks": Counter("embedq_worker_webhook_attempts", "Webhook delivery attempts by outcome", ["outcome"]),
    }


def observe_encode(encoder: Encoder, inputs: int, tokens: int, elapsed: float) -> None:
    """Record batch size, tokens and time of one encode call, and the models this child holds.

    ``tokens`` comes from the encode call's own tokenization (``Encoder.encode_counted``), not a second one.
    """
    metrics = _metrics()
    name = encoder.name
    if id(encoder) not in _state["loaded"]:
        _state["loaded"].add(id(encoder))
        metrics["load"].labels(name).observe(encoder.load_seconds)
    metrics["batch"].labels(name).observe(inputs)
    metrics["tokens"].labels(name).inc(tokens)
    metrics["seconds"].labels(name).inc(elapsed)
    if elapsed > 0:
        metrics["tokens_per_second"].labels(name).set(tokens / elapsed)
    _update_resident()


def _update_resident() -> None:
    from workers.runtime.registry import resident_models

    resident = set(resident_models())
    gauge = _metrics()["resident"]
    for name in _state["resident"] - resident:
        gauge.labels(name).set(0)
    for name in resident:
        gauge.labels(name).set(1)
    _state["resident"] = resident


def task_finished(task_name: str, state: str) -> None:
    """Count a finished task (state: SUCCESS, FAILURE, RETRY, ...)."""
    _metrics()["tasks"].labels(task_name, state).inc()


def store_outage(task_name: str) -> None:
    """Count a task run sent back to its queue because a store did not answer (``app.core.store_outages``)."""
    _metrics()["store_outages"].labels(task_name).inc()


def task_given_up(task_name: str) -> None:
    """Count a task given up because its worker died at every start (``workers.task_starts``)."""
    _metrics()["given_up"].labels(task_name).inc()


def webhook_attempted(outcome: str) -> None:
    """Count one webhook delivery attempt by what came of it."""
    _metrics()["webhooks"].labels(outcome).inc()
