"""Webhook delivery in-process against a real local receiver (pytest-httpserver) and the real database.

Each test finishes a job through the real jobs service (``cancel_job`` calls ``app.jobs.lifecycle``), then
plays the worker's part by calling ``deliver_event`` itself, following the retries it schedules.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pytest_httpserver import HTTPServer
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook
from support.principals import ADMIN
from support.vectors import fake_encode
from werkzeug import Request, Response

from app.core.config import Settings
from app.core.db import session_scope
from app.core.errors import ConflictError
from app.jobs import lifecycle
from app.jobs import service as jobs
from app.jobs.schemas import EmbeddingJobCreate
from app.models.webhook import WebhookEndpoint, WebhookEvent
from app.observability.logging import configure_logging
from app.webhooks import service
from app.webhooks.delivery import DeliveryOutcome, Outcome, deliver_event
from app.webhooks.schemas import EndpointCreate, EndpointUpdate


@pytest.fixture
def settings(session_services) -> Settings:
    return Settings(
        webhook_allowed_cidrs=["127.0.0.1/32"],
        webhook_retry_schedule_s=[0.05, 0.05, 0.05],
        webhook_retry_jitter=0,
    )


@pytest.fixture
def receiver(httpserver_ipv4: HTTPServer) -> HTTPServer:
    return httpserver_ipv4


@dataclass
class Finished:
    job_id: uuid.UUID
    event_id: uuid.UUID
    secret: str


def register(url: str, settings: Settings) -> tuple[uuid.UUID, str]:
    with session_scope() as session:
        endpoint, secret = service.create_endpoint(session, EndpointCreate(url=url), settings, ADMIN)
        return endpoint.id, secret


def finish_job(url: str) -> uuid.UUID:
    """Create a job with ``webhook_url`` and cancel it: the jobs service's terminal hook records the event."""
    with session_scope() as session:
        job, _ = jobs.create_embedding_job(
            session, EmbeddingJobCreate(input=["a", "b"], webhook_url=url), Settings(), ADMIN
        )
    with session_scope() as session:
        jobs.cancel_job(session, job.id, ADMIN)
    return job.id


def events_of(job_id: uuid.UUID) -> list[WebhookEvent]:
    with session_scope() as session:
        return list(session.scalars(select(WebhookEvent).where(WebhookEvent.job_id == job_id)))


def run_worker(job_id: uuid.UUID, event_id: uuid.UUID, settings: Settings, token: int = 0) -> list[DeliveryOutcome]:
    """Deliver like the webhooks worker would, following scheduled retries until the event settles."""
    sent: list[tuple[int, float]] = []
    outcomes: list[DeliveryOutcome] = []

    def dispatch(_job: str, _event: str, next_token: int, delay: float, _settings: Settings) -> None:
        sent.append((next_token, delay))

    for _ in range(50):
        outcome = deliver_event(session_scope, str(job_id), event_id, token, settings, dispatch=dispatch)
        outcomes.append(outcome)
        if not sent:
            return outcomes
        token, delay = sent.pop()
        time.sleep(min(delay, 1.0))
    raise AssertionError(f"the event did not settle: {outcomes}")


def requests_to(receiver: HTTPServer, path: str) -> list[Request]:
    # By path: a slow handler of an earlier test may still log its request after that test ended.
    return [request for request, _ in receiver.log if request.path == path]


def verified(request: Request, secret: str) -> dict:
    return Webhook(secret).verify(request.get_data(as_text=True), dict(request.headers))


def test_a_signed_event_reaches_the_receiver_and_verifies(clean_state, receiver: HTTPServer, settings) -> None:
    url = receiver.url_for("/hooks/embedq")
    _, secret = register(url, settings)
    receiver.expect_oneshot_request("/hooks/embedq", method="POST").respond_with_data("thanks", status=204)
    job_id = finish_job(url)
    [event] = events_of(job_id)

    assert [o.outcome for o in run_worker(job_id, event.id, settings)] == [Outcome.SUCCEEDED]

    [request] = requests_to(receiver, "/hooks/embedq")
    payload = verified(request, secret)
    assert payload["type"] == "job.cancelled"
    assert payload["data"]["id"] == str(job_id) and payload["data"]["status"] == "cancelled"
    assert payload["data"]["counts"] == {"total": 2, "done": 0, "failed": 0}
    assert payload["data"]["links"]["self"] == f"/jobs/{job_id}"
    # State and links, never the vectors.
    assert set(payload["data"]) == {
        "id", "kind", "status", "model", "counts", "progress", "message", "error",
        "created_at", "started_at", "finished_at", "links",
    }  # fmt: skip
    assert request.headers["webhook-id"] == f"msg_{event.id.hex}"
    assert request.headers["content-type"] == "application/json"
    with session_scope() as session:
        log = service.delivery_log(session, job_id, ADMIN)
    assert [(d.attempt, d.status_code, d.succeeded, d.address) for d in log.data] == [(1, 204, True, "127.0.0.1")]
    assert log.events[0].status == "succeeded"


def test_failing_twice_then_succeeding_gives_three_log_rows_and_one_success(
    clean_state, receiver: HTTPServer, settings
) -> None:
    url = receiver.url_for("/flaky")
    _, secret = register(url, settings)
    receiver.expect_ordered_request("/flaky").respond_with_data("database is down", status=500)
    receiver.expect_ordered_request("/flaky").respond_with_data("still down", status=502)
    receiver.expect_ordered_request("/flaky").respond_with_data("ok", status=200)
    job_id = finish_job(url)
    [event] = events_of(job_id)

    outcomes = run_worker(job_id, event.id, settings)

    assert [o.outcome for o in outcomes] == [Outcome.RETRYING, Outcome.RETRYING, Outcome.SUCCEEDED]
    with session_scope() as session:
        log = service.delivery_log(session, job_id, ADMIN)
    assert [(d.attempt, d.status_code, d.succeeded) for d in log.data] == [
        (1, 500, False),
        (2, 502, False),
        (3, 200, True),
    ]
    assert log.data[0].response_body == "database is down" and log.data[0].error == "receiver answered 500"
    assert all(d.duration_ms > 0 for d in log.data)
    assert log.events[0].status == "succeeded" and log.events[0].attempts == 3
    # Every attempt repeats the webhook-id and carries a signature that verifies.
    requests = requests_to(receiver, "/flaky")
    assert {request.headers["webhook-id"] for request in requests} == {f"msg_{event.id.hex}"}
    for request in requests:
        verified(request, secret)


def test_410_disables_the_endpoint_and_later_events_are_not_sent(clean_state, receiver: HTTPServer, settings) -> None:
    url = receiver.url_for("/gone")
    endpoint_id, _ = register(url, settings)
    receiver.expect_request("/gone").respond_with_data("unsubscribed", status=410)
    job_id = finish_job(url)
    [event] = events_of(job_id)

    assert [o.outcome for o in run_worker(job_id, event.id, settings)] == [Outcome.FAILED]

    with session_scope() as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        assert endpoint is not None and not endpoint.enabled and "410" in (endpoint.disabled_reason or "")
    second_job = finish_job(url)
    [second] = events_of(second_job)
    assert second.status == "failed" and "endpoint disabled" in (second.last_error or "")
    with session_scope() as session, pytest.raises(ConflictError, match="re-enable"):
        service.redeliver(session, second_job, ADMIN)
    assert len(requests_to(receiver, "/gone")) == 1

    # Re-enabled, a redelivery sends the same event again.
    receiver.clear()
    receiver.expect_request("/gone").respond_with_data("", status=200)
    with session_scope() as session:
        service.update_endpoint(session, endpoint_id, EndpointUpdate(enabled=True), ADMIN)
    with session_scope() as session:
        queued = service.redeliver(session, second_job, ADMIN)
    [restarted] = events_of(second_job)
    outcomes = run_worker(second_job, restarted.id, settings, token=restarted.dispatch_token)
    assert queued.events[0].status == "pending" and outcomes[-1].outcome is Outcome.SUCCEEDED


def test_retry_after_is_honoured_on_429_and_503(clean_state, receiver: HTTPServer, settings) -> None:
    for status in (429, 503):
        assert_retry_after_honoured(receiver, settings, status)


def assert_retry_after_honoured(receiver: HTTPServer, settings: Settings, status: int) -> None:
    """A receiver answering ``status`` with ``Retry-After: 7`` gets its next attempt in 7 s, not by the schedule."""
    path = f"/busy-{status}"
    url = receiver.url_for(path)
    register(url, settings)
    receiver.expect_request(path).respond_with_response(
        Response("slow down", status=status, headers={"Retry-After": "7"})
    )
    job_id = finish_job(url)
    [event] = events_of(job_id)
    delays: list[float] = []
    outcome = deliver_event(session_scope, str(job_id), event.id, 0, settings, dispatch=lambda *a: delays.append(a[3]))
    assert outcome.outcome is Outcome.RETRYING and outcome.status_code == status, outcome
    assert outcome.next_delay_s == 7 and delays == [7], (status, outcome, delays)
    with session_scope() as session:
        assert service.delivery_log(session, job_id, ADMIN).events[0].next_attempt_at is not None
    # Early messages (a long delay is covered in hops) only re-queue themselves for the time left.
    waiting: list[float] = []
    early = deliver_event(session_scope, str(job_id), event.id, 1, settings, dispatch=lambda *a: waiting.append(a[3]))
    assert early.outcome is Outcome.WAITING and 5 < waiting[0] <= 7, (status, early, waiting)
    assert len(requests_to(receiver, path)) == 1


def test_redirects_are_not_followed(clean_state, receiver: HTTPServer, settings) -> None:
    url = receiver.url_for("/old")
    register(url, settings)
    receiver.expect_request("/old").respond_with_data("", status=302, headers={"Location": "http://169.254.169.254/"})
    job_id = finish_job(url)
    [event] = events_of(job_id)
    outcome = deliver_event(session_scope, str(job_id), event.id, 0, settings, dispatch=lambda *a: None)
    assert outcome.outcome is Outcome.RETRYING and outcome.status_code == 302
    with session_scope() as session:
        [row] = service.delivery_log(session, job_id, ADMIN).data
    assert "not followed" in (row.error or "") and len(requests_to(receiver, "/old")) == 1


def test_the_schedule_runs_out_and_the_event_fails(clean_state, receiver: HTTPServer, settings) -> None:
    url = receiver.url_for("/down")
    register(url, settings)
    receiver.expect_request("/down").respond_with_data("no", status=500)
    job_id = finish_job(url)
    [event] = events_of(job_id)
    outcomes = run_worker(job_id, event.id, settings.model_copy(update={"webhook_retry_schedule_s": [0.05]}))
    assert [o.outcome for o in outcomes] == [Outcome.RETRYING, Outcome.FAILED]
    with session_scope() as session:
        log = service.delivery_log(session, job_id, ADMIN)
    assert len(log.data) == 2 and "gave up after 2 attempts" in (log.events[0].last_error or "")


def test_a_slow_receiver_times_out_and_is_retried(clean_state, receiver: HTTPServer, settings) -> None:
    url = receiver.url_for("/slow")
    register(url, settings)

    def slow(_: Request) -> Response:
        time.sleep(1.5)
        return Response("late")

    receiver.expect_request("/slow").respond_with_handler(slow)
    job_id = finish_job(url)
    [event] = events_of(job_id)
    quick = settings.model_copy(update={"webhook_timeout_s": 0.3})
    outcome = deliver_event(session_scope, str(job_id), event.id, 0, quick, dispatch=lambda *a: None)
    assert outcome.outcome is Outcome.RETRYING
    with session_scope() as session:
        [row] = service.delivery_log(session, job_id, ADMIN).data
    assert row.status_code is None and "Timeout" in (row.error or "")
    assert Settings().webhook_timeout_s == 10


@pytest.fixture
def dripping_receiver() -> Iterator[str]:
    """A receiver that answers its status line, then one header line every 0.2 s for 20 s: no read ever waits
    long enough to time out."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\n")
                for n in range(100):
                    if stop.wait(0.2):
                        break
                    try:
                        conn.sendall(f"x-drip-{n}: {n}\r\n".encode())
                    except OSError:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/drip"
    stop.set()
    thread.join(5)
    server.close()


def test_an_attempt_ends_by_its_timeout_however_slowly_the_receiver_answers(
    clean_state, dripping_receiver: str, settings
) -> None:
    register(dripping_receiver, settings)
    job_id = finish_job(dripping_receiver)
    [event] = events_of(job_id)
    quick = settings.model_copy(update={"webhook_timeout_s": 1.0})
    started = time.monotonic()
    outcome = deliver_event(session_scope, str(job_id), event.id, 0, quick, dispatch=lambda *a: None)
    took = time.monotonic() - started
    assert outcome.outcome is Outcome.RETRYING
    with session_scope() as session:
        [row] = service.delivery_log(session, job_id, ADMIN).data
    assert row.status_code is None and "Timeout" in (row.error or ""), row.error
    assert row.duration_ms < 3000 and took < 10, (row.duration_ms, took)  # the receiver would have gone on 20 s


def test_no_log_line_shows_a_webhook_url_s_password_or_token(
    clean_state, receiver: HTTPServer, settings, caplog: pytest.LogCaptureFixture
) -> None:
    base = receiver.url_for("/secret-path")
    url = base.replace("http://", "http://hookuser:s3cretpw@") + "?token=abc123tok"
    receiver.expect_request("/secret-path").respond_with_data("ok")
    configure_logging(settings, "INFO")  # as every embedq process does: httpx's request lines included
    caplog.set_level("INFO")
    job_id = finish_job(url)
    [event] = events_of(job_id)
    assert deliver_event(session_scope, str(job_id), event.id, 0, settings).outcome is Outcome.SUCCEEDED
    [request] = requests_to(receiver, "/secret-path")
    assert request.args["token"] == "abc123tok" and request.authorization is not None  # the receiver got them
    logged = "\n".join(f"{r.name}: {r.getMessage()}" for r in caplog.records if r.name != "werkzeug")
    assert "/secret-path" in logged and "token=***" in logged, logged
    assert "s3cretpw" not in logged and "abc123tok" not in logged and "hookuser" not in logged, logged


def test_the_guard_runs_again_at_send_time(clean_state, receiver: HTTPServer, settings) -> None:
    url = receiver.url_for("/internal")
    register(url, settings)
    receiver.expect_request("/internal").respond_with_data("should never be reached")
    job_id = finish_job(url)
    [event] = events_of(job_id)
    # The operator has since removed 127.0.0.1 from the allow-list.
    closed = settings.model_copy(update={"webhook_allowed_cidrs": []})
    outcome = deliver_event(session_scope, str(job_id), event.id, 0, closed, dispatch=lambda *a: None)
    assert outcome.outcome is Outcome.FAILED and requests_to(receiver, "/internal") == []
    with session_scope() as session:
        [row] = service.delivery_log(session, job_id, ADMIN).data
    assert row.error is not None and row.error.startswith("refused") and "loopback" in row.error


def test_a_stale_or_repeated_message_sends_nothing(clean_state, receiver: HTTPServer, settings) -> None:
    url = receiver.url_for("/once")
    register(url, settings)
    receiver.expect_request("/once").respond_with_data("ok")
    job_id = finish_job(url)
    [event] = events_of(job_id)
    assert deliver_event(session_scope, str(job_id), event.id, 0, settings).outcome is Outcome.SUCCEEDED
    assert deliver_event(session_scope, str(job_id), event.id, 0, settings).outcome is Outcome.STALE
    assert deliver_event(session_scope, str(job_id), event.id, 5, settings).outcome is Outcome.STALE
    assert len(requests_to(receiver, "/once")) == 1


def test_an_unregistered_url_gets_an_endpoint_and_rotation_signs_with_both(
    clean_state, receiver: HTTPServer, settings
) -> None:
    url = receiver.url_for("/unregistered")
    receiver.expect_request("/unregistered").respond_with_data("ok")
    job_id = finish_job(url)
    [event] = events_of(job_id)
    with session_scope() as session:
        endpoint = session.get(WebhookEndpoint, event.endpoint_id)
        assert endpoint is not None and endpoint.auto_created and endpoint.url == url
        first_secret = endpoint.secret
    with session_scope() as session:
        _, second_secret = service.rotate_secret(session, event.endpoint_id, 3600, settings, ADMIN)
    run_worker(job_id, event.id, settings)
    [request] = requests_to(receiver, "/unregistered")
    # During the overlap a receiver holding either secret accepts the event.
    verified(request, first_secret)
    verified(request, second_secret)
    assert json.loads(request.get_data())["type"] == "job.cancelled"


def test_progress_milestones_send_one_signed_event_each_even_when_batches_are_redelivered(
    clean_state, receiver: HTTPServer, settings
) -> None:
    url = receiver.url_for("/progress")
    _, secret = register(url, settings)
    receiver.expect_request("/progress").respond_with_data("", status=204)
    payload = EmbeddingJobCreate(input=["a", "b", "c", "d"], webhook_url=url, progress_milestones=[75, 25, 50])
    with session_scope() as session:
        job, _ = jobs.create_embedding_job(session, payload, Settings(job_batch_size=1), ADMIN)

    def progress_events() -> list[WebhookEvent]:
        return [e for e in events_of(job.id) if e.type == "job.progress"]

    jobs.run_embedding_batch(session_scope, job.id, range(0, 1), fake_encode)
    assert len(progress_events()) == 1  # 25%
    # A redelivered batch (its input already embedded) and a repeated progress update add no event.
    jobs.run_embedding_batch(session_scope, job.id, range(0, 1), fake_encode)
    with session_scope() as session:
        lifecycle.report_progress(session, job.id, 25.0, [25, 50, 75])
    assert len(progress_events()) == 1
    for start in (1, 2, 3):
        jobs.run_embedding_batch(session_scope, job.id, range(start, start + 1), fake_encode)
    assert sorted(e.type for e in events_of(job.id)) == ["job.progress"] * 3 + ["job.succeeded"]

    for event in events_of(job.id):
        assert [o.outcome for o in run_worker(job.id, event.id, settings)] == [Outcome.SUCCEEDED]
    received = [verified(request, secret) for request in requests_to(receiver, "/progress")]
    progress = sorted((p["data"]["milestone"], p["data"]["progress"]) for p in received if p["type"] == "job.progress")
    assert progress == [(25, 25.0), (50, 50.0), (75, 75.0)]
    assert [p["data"]["status"] for p in received if p["type"] == "job.succeeded"] == ["succeeded"]


@pytest.mark.parametrize("milestones", [[0], [100], [50, 50], [], list(range(1, 12))])
def test_bad_progress_milestones_are_refused(milestones: list[int]) -> None:
    with pytest.raises(ValueError, match="progress_milestones"):
        EmbeddingJobCreate(input=["a"], progress_milestones=milestones)
