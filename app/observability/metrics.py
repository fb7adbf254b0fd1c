"""The API's Prometheus metrics: requests by route, and the state of the system read at scrape time.

Request counters live in this process. Jobs by kind and status, webhook events by status, per-tenant
usage (``app.observability.tenant_metrics``) and queue depths are read from Postgres and Redis when
``/metrics`` is scraped, so any API replica reports the
whole system. Workers export their own metrics on a port of their own (``workers.metrics``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import get_settings
from app.core.db import session_scope
from app.core.queues import Queue
from app.models.job import JobKind, JobStatus
from app.models.webhook import WebhookEventStatus
from app.observability.repository import MetricsRepository
from app.observability.tenant_metrics import tenant_families
from app.usage.repository import UsageRepository

log = logging.getLogger(__name__)

# kombu's Redis transport keeps priority levels 3, 6 and 9 of a queue in lists named queue + sep + level.
_KOMBU_PRIORITY_SEP = "\x06\x16"
_KOMBU_PRIORITY_STEPS = (3, 6, 9)


def queue_depths(client: redis.Redis) -> dict[str, int]:
    """Return the number of messages waiting in each queue (reserved and scheduled ones excluded)."""
    pipe = client.pipeline(transaction=False)
    for queue in Queue:
        pipe.llen(queue.value)
        for step in _KOMBU_PRIORITY_STEPS:
            pipe.llen(f"{queue.value}{_KOMBU_PRIORITY_SEP}{step}")
    lengths = iter(pipe.execute())
    return {queue.value: sum(next(lengths) for _ in range(1 + len(_KOMBU_PRIORITY_STEPS))) for queue in Queue}


class SystemCollector(Collector):
    """Gauges read from Postgres and Redis at each scrape; a source that fails is reported, not fatal."""

    def collect(self) -> Iterator[Metric]:
        errors = GaugeMetricFamily(
            "embedq_scrape_source_up", "1 if the source could be read for this scrape", labels=["source"]
        )
        jobs = GaugeMetricFamily("embedq_jobs", "Jobs by kind and status", labels=["kind", "status"])
        events = GaugeMetricFamily("embedq_webhook_events", "Webhook events by status", labels=["status"])
        try:
            with session_scope() as session:
                repo = MetricsRepository(session)
                job_counts = repo.jobs_by_kind_and_status()
                event_counts = repo.webhook_events_by_status()
                usage = UsageRepository(session).by_tenant_and_kind()
        except Exception as exc:
            log.warning("metrics: cannot read Postgres: %s", exc)
            errors.add_metric(["postgres"], 0)
        else:
            errors.add_metric(["postgres"], 1)
            keys = {(k.value, s.value) for k in JobKind for s in JobStatus} | set(job_counts)
            for kind, status in sorted(keys):
                jobs.add_metric([kind, status], job_counts.get((kind, status), 0))
            for status in sorted({s.value for s in WebhookEventStatus} | set(event_counts)):
                events.add_metric([status], event_counts.get(status, 0))
            yield jobs
            yield events
            yield from tenant_families(usage, get_settings().tenant_metrics_max_tenants)
        yield from self._queues(errors)
        yield errors

    def _queues(self, errors: GaugeMetricFamily) -> Iterator[Metric]:
        settings = get_settings()
        depth = GaugeMetricFamily("embedq_queue_depth", "Messages waiting in each Celery queue", labels=["queue"])
        try:
            client = redis.Redis.from_url(settings.require_services()[1], socket_timeout=settings.readiness_timeout_s)
            try:
                depths = queue_depths(client)
            finally:
                client.close()
        except redis.RedisError as exc:
            log.warning("metrics: cannot read Redis: %s", exc)
            errors.add_metric(["redis"], 0)
            return
        errors.add_metric(["redis"], 1)
        for queue, count in depths.items():
            depth.add_metric([queue], count)
        yield depth


class ApiMetrics:
    """One API's metric registry: request counters and latencies, process stats, and the system gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "embedq_http_requests",
            "HTTP requests by method, route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "embedq_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(SystemCollector())


def route_label(scope: Scope) -> str:
    """Return the route template (or mount path) that served the request, "unmatched" when none did."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"


class MetricsMiddleware:
    """ASGI middleware counting every HTTP request by route template and timing it."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = route_label(scope)
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - started)
