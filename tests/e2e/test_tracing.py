"""End to end on real processes: OpenTelemetry traces reach an OTLP/HTTP receiver (a small server in this test),
one trace per request across the API, the Celery message and the worker; with OTEL unset nothing is set up.

The receiver decodes the collector protocol (``ExportTraceServiceRequest`` protobufs POSTed to /v1/traces).
The processes get a Redis database of their own, so no other test's worker takes their tasks untraced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from pytest_httpserver import HTTPServer
from support.paths import REPO_ROOT
from support.processes import ManagedProcess, start_api, start_worker
from support.services import session_redis
from support.sync_stack import start_sync_worker, sync_queue_env
from support.tiny_models import make_tiny_bert
from support.waiting import wait_job, wait_until

from app.core.queues import Queue

pytestmark = pytest.mark.e2e

MODEL = "trace-tiny"
JOB_TEXTS = ["plover input one", "plover input two", "plover input three"]
SYNC_TEXT = "plover sync input"


@dataclass(frozen=True)
class Span:
    trace_id: str
    name: str
    service: str
    pid: int
    scope: str
    attributes: dict[str, Any]


@dataclass
class Receiver:
    """What an OTLP/HTTP trace receiver was sent."""

    url: str
    spans: list[Span] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, request: ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            Span(
                                span.trace_id.hex(),
                                span.name,
                                str(resource.get("service.name")),
                                int(resource.get("process.pid", 0)),
                                scope_spans.scope.name,
                                _attributes(span.attributes),
                            )
                        )

    def trace_of(self, name: str, **attributes: Any) -> list[Span]:
        """Return every span of the trace holding a span ``name`` with ``attributes`` ([] while there is none)."""
        with self.lock:
            spans = list(self.spans)
        roots = [s for s in spans if s.name == name and attributes.items() <= s.attributes.items()]
        return [s for s in spans if roots and s.trace_id == roots[0].trace_id]


def _attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        out[pair.key] = getattr(pair.value, kind) if kind else None
    return out


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            found.record(request)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found = Receiver(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()


@dataclass(frozen=True)
class TracedStack:
    api: ManagedProcess
    worker: ManagedProcess
    sync_worker: ManagedProcess


@pytest.fixture(scope="module")
def traced(service_env: dict[str, str], receiver: Receiver) -> Iterator[TracedStack]:
    make_tiny_bert(Path(service_env["EMBEDQ_MODELS_DIR"]) / MODEL)
    with session_redis() as own_redis:
        env = sync_queue_env(
            service_env,
            "traces",
            EMBEDQ_REDIS_URL=own_redis.url,
            EMBEDQ_DEFAULT_MODEL=MODEL,
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_BSP_SCHEDULE_DELAY="100",
        )
        worker = start_worker(env, queues=(Queue.INFERENCE, Queue.WEBHOOKS), concurrency=1)
        sync_worker = start_sync_worker(env)
        api = start_api(env)
        yield TracedStack(api, worker, sync_worker)
        api.stop()
        sync_worker.stop()
        worker.stop()


def test_a_job_is_one_trace_from_the_api_through_the_worker_to_its_webhook(
    traced: TracedStack, receiver: Receiver, clean_state, httpserver_ipv4: HTTPServer
) -> None:
    httpserver_ipv4.expect_request("/hook", method="POST").respond_with_data("ok")
    with httpx.Client(base_url=traced.api.base_url, timeout=60) as client:
        created = client.post(
            "/jobs/embeddings", json={"input": JOB_TEXTS, "webhook_url": httpserver_ipv4.url_for("/hook")}
        )
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        assert wait_job(client, job_id, timeout=120)["status"] == "succeeded"

    def complete() -> list[Span]:
        spans = receiver.trace_of("POST /jobs/embeddings", **{"embedq.job_id": job_id})
        return spans if {"run/embed.batch", "run/webhook.deliver", "POST"} <= {s.name for s in spans} else []

    spans = wait_until(complete, 60, lambda _: f"no complete trace of job {job_id}: {_names(receiver.spans)}")
    api_pid, worker_pids = traced.api.pid, {s.pid for s in spans if s.service == "embedq-worker"}
    assert {s.pid for s in spans if s.service == "embedq-api"} == {api_pid}
    assert worker_pids and api_pid not in worker_pids
    names_by_service = {(s.service, s.name) for s in spans}
    assert ("embedq-api", "apply_async/embed.batch") in names_by_service
    assert ("embedq-worker", "apply_async/webhook.deliver") in names_by_service
    worker_scopes = {s.scope for s in spans if s.service == "embedq-worker"}
    for library in ("sqlalchemy", "redis", "httpx"):  # Postgres writes, the webhook's message, its delivery
        assert any(scope.startswith(f"opentelemetry.instrumentation.{library}") for scope in worker_scopes), library
    [batch] = [s for s in spans if s.name == "run/embed.batch"]
    assert batch.attributes["embedq.job_id"] == job_id and batch.attributes["embedq.tenant"] == "default"
    assert batch.attributes["embedq.batch_size"] == 3 and batch.attributes["embedq.tokens"] > 0
    assert batch.attributes["embedq.model"] == MODEL and batch.attributes["embedq.kind"] == "embeddings"
    assert_no_input_text(receiver)


def test_a_sync_request_is_one_trace_across_the_api_and_the_sync_worker(
    traced: TracedStack, receiver: Receiver, clean_state
) -> None:
    with httpx.Client(base_url=traced.api.base_url, timeout=60) as client:
        answered = client.post("/v1/embeddings", json={"input": [SYNC_TEXT], "model": MODEL})
        assert answered.status_code == 200, answered.text

    def complete() -> list[Span]:
        spans = receiver.trace_of("POST /v1/embeddings", **{"embedq.model": MODEL})
        return spans if "run/inference.run" in {s.name for s in spans} else []

    spans = wait_until(complete, 60, lambda _: f"no complete trace of the sync request: {_names(receiver.spans)}")
    assert {s.pid for s in spans if s.name == "run/inference.run"} == {traced.sync_worker.pid}
    assert {s.pid for s in spans if s.service == "embedq-api"} == {traced.api.pid}
    [server] = [s for s in spans if s.name == "POST /v1/embeddings"]
    assert server.attributes["embedq.batch_size"] == 1 and server.attributes["embedq.tokens"] > 0
    assert_no_input_text(receiver)


def assert_no_input_text(receiver: Receiver) -> None:
    with receiver.lock:
        values = json.dumps([s.attributes for s in receiver.spans], default=str)
    assert "plover" not in values


def _names(spans: list[Span]) -> list[tuple[str, str]]:
    return sorted({(s.service, s.name) for s in spans})


def test_with_otel_unset_nothing_is_set_up_or_instrumented(service_env: dict[str, str]) -> None:
    # redis-py imports the OpenTelemetry SDK for observability of its own when it is installed: what counts
    # is that no tracer provider is set and no instrumentation is loaded.
    probe = (
        "import sys\n"
        "from app.main import create_app\n"
        "import workers.celery_app\n"
        "from workers.observability import start_tracing\n"
        "create_app(); start_tracing()\n"
        "from app.observability.tracing import tracing_on\n"
        "from opentelemetry import trace\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry.instrumentation.'))\n"
        "print(tracing_on(), type(trace.get_tracer_provider()).__name__, loaded)\n"
    )
    env = {k: v for k, v in {**os.environ, **service_env}.items() if not k.startswith("OTEL_")}
    env.update({"PYTHONPATH": str(REPO_ROOT), "OTEL_SERVICE_NAME": "embedq-unused"})
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False ProxyTracerProvider []"
