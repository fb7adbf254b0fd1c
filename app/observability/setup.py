"""What the API adds for operators: logging with job ids, request metrics, ``GET /metrics``, and traces."""

from __future__ import annotations

import re

from fastapi import Depends, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.config import get_settings
from app.observability.access import metrics_reader
from app.observability.logging import configure_logging, log_context
from app.observability.metrics import ApiMetrics, MetricsMiddleware
from app.observability.tracing import instrument_api

_JOB_PATH = re.compile(r"^/jobs/([0-9a-fA-F-]{36})(?:/|$)")


class JobLogContextMiddleware:
    """Tag every record logged while serving ``/jobs/{id}...`` with that job id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _JOB_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        with log_context(job_id=match.group(1).lower()):
            await self.app(scope, receive, send)


def _metrics_endpoint(request: Request) -> Response:
    """Return every metric of this API in the Prometheus text format."""
    metrics: ApiMetrics = request.app.state.metrics
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def instrument(api: FastAPI) -> None:
    """Configure logging, count and time every request, serve ``GET /metrics`` (admins and the scrape token), and
    trace requests when the OTEL_* variables ask for it."""
    configure_logging(get_settings())
    api.state.metrics = ApiMetrics()
    api.add_middleware(JobLogContextMiddleware)
    api.add_middleware(MetricsMiddleware, metrics=api.state.metrics)
    api.add_api_route(
        "/metrics",
        _metrics_endpoint,
        methods=["GET"],
        tags=["monitoring"],
        include_in_schema=False,
        dependencies=[Depends(metrics_reader)],
    )
    instrument_api(api)
