"""OpenTelemetry traces, configured only by the standard ``OTEL_*`` variables, and off (nothing imported) by default.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, sent as protobuf over HTTP, or
``console``), or when it is unset and an OTLP endpoint is (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turns it
off. Otherwise no SDK is set up and nothing is instrumented. The exporter, its endpoint and headers, the
service name (default ``embedq-api`` / ``embedq-worker``), the resource attributes, the sampler
(``OTEL_TRACES_SAMPLER``) and the batch processor read their own variables, as the SDK defines them.

Instrumented: FastAPI (the API's requests), Celery (the send side in the API, the task side in workers,
with the trace context in the task headers), SQLAlchemy, redis and httpx (webhook deliveries). The spans
carry ids, counts and names (``embedq.*`` attributes via ``annotate``), never input text; redis commands
are recorded without their arguments by the instrumentation.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import ReadableSpan

log = logging.getLogger(__name__)

_EXPORTERS = ("otlp", "otlp_proto_http", "console")
# The API's own probes and scrapes would be most of its traces.
_EXCLUDED_URLS = "/healthz,/readyz,/metrics"
_REDIS_SCOPE = "opentelemetry.instrumentation.redis"
_state: dict[str, Any] = {"provider": None, "pid": None}


def tracing_requested() -> bool:
    """Return whether the OTEL_* variables ask for traces (see the module docstring)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def tracing_on() -> bool:
    """Return whether this process exports traces."""
    return _state["provider"] is not None and _state["pid"] == os.getpid()


def setup_tracing(role: str) -> bool:
    """Set up the SDK and the instrumentations in this process if OTEL_* asks for it; return whether it is on.

    ``role`` ("api" or "worker") names the service when OTEL_SERVICE_NAME does not. Call it in the process
    that does the work: a forked pool child, not the parent (the export thread does not survive a fork).
    """
    if tracing_on():
        return True
    if not tracing_requested():
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    resource = Resource.create({"service.name": f"embedq-{role}", "embedq.role": role, "process.pid": os.getpid()})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(_processor())
    trace.set_tracer_provider(provider)
    _instrument_libraries()
    _state.update(provider=provider, pid=os.getpid())
    log.info("tracing on: %s spans of %s", os.environ.get("OTEL_TRACES_EXPORTER") or "otlp", resource.attributes)
    return True


def _processor() -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    name = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if name not in _EXPORTERS:
        log.warning("OTEL_TRACES_EXPORTER=%s is not one embedq ships (%s): using otlp", name, ", ".join(_EXPORTERS))
    if name == "console":
        exporter: Any = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()

    class _WithoutIdleRedis(BatchSpanProcessor):
        """Drop redis spans that belong to no trace: a worker's broker polls, the API's reply listener."""

        def on_end(self, span: ReadableSpan) -> None:
            scope = span.instrumentation_scope
            if span.parent is None and scope is not None and scope.name.startswith(_REDIS_SCOPE):
                return
            super().on_end(span)

    return _WithoutIdleRedis(exporter)


def _instrument_libraries() -> None:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    for instrumentor in (CeleryInstrumentor(), RedisInstrumentor(), HTTPXClientInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()
    # A wrapper of create_engine, which app/core/db.py looks up when it builds the engine. The instrumentation
    # declares SQLAlchemy < 2.1 and would do nothing on our 2.1; the engine events it uses are the same in 2.1
    # (tests/e2e/test_tracing.py sees its spans).
    sqlalchemy = SQLAlchemyInstrumentor()
    if not sqlalchemy.is_instrumented_by_opentelemetry:
        sqlalchemy.instrument(skip_dep_check=True)


def instrument_api(api: FastAPI) -> None:
    """Trace the API's requests (and what they send and query) if OTEL_* asks for traces."""
    if not setup_tracing("api"):
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(api, excluded_urls=_EXCLUDED_URLS)


def flush_tracing() -> None:
    """Export the spans still buffered (a pool child about to exit)."""
    if tracing_on():
        _state["provider"].force_flush()


def annotate(**attributes: str | int | float | bool | None) -> None:
    """Add ``embedq.<name>`` attributes to the current span (ids, counts, names: never input text).

    Costs one dict lookup when tracing is off; None values are left out.
    """
    if _state["provider"] is None:
        return
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({f"embedq.{name}": value for name, value in attributes.items() if value is not None})
