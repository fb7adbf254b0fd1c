"""End to end: a real API and worker embed a job, and the worker's webhook task notifies a local receiver.

The session's worker consumes the webhooks queue with the test environment's short retry schedule and
an allow-list holding 127.0.0.1/32 (see conftest), where pytest-httpserver listens.
"""

from __future__ import annotations

import httpx
import pytest
from pytest_httpserver import HTTPServer
from standardwebhooks.webhooks import Webhook
from support.waiting import wait_until

pytestmark = pytest.mark.e2e


def deliveries(client: httpx.Client, job_id: str) -> dict:
    return client.get(f"/jobs/{job_id}/webhook-deliveries").json()


def test_a_finished_job_sends_a_signed_event(api, worker, clean_state, httpserver_ipv4: HTTPServer) -> None:
    url = httpserver_ipv4.url_for("/e2e/ok")
    httpserver_ipv4.expect_request("/e2e/ok", method="POST").respond_with_data("ok")
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        secret = client.post("/webhook-endpoints", json={"url": url}).json()["secret"]
        job = client.post("/jobs/embeddings", json={"input": ["one", "two", "three"], "webhook_url": url}).json()
        wait_until(
            lambda: [r for r, _ in httpserver_ipv4.log if r.path == "/e2e/ok"], 120, "timed out waiting for the webhook"
        )
        [(request, _)] = [(r, s) for r, s in httpserver_ipv4.log if r.path == "/e2e/ok"]
        payload = Webhook(secret).verify(request.get_data(as_text=True), dict(request.headers))
        assert payload["type"] == "job.succeeded" and payload["data"]["id"] == job["id"]
        assert payload["data"]["counts"] == {"total": 3, "done": 3, "failed": 0}
        log = wait_until(
            lambda: (d := deliveries(client, job["id"]))["data"] and d, 120, "timed out waiting for the delivery log"
        )
        assert [(row["attempt"], row["status_code"], row["succeeded"]) for row in log["data"]] == [(1, 200, True)]

        # A redelivery sends the same event again, under the same webhook-id.
        assert client.post(f"/jobs/{job['id']}/webhook-deliveries/redeliver").status_code == 202
        wait_until(lambda: len(deliveries(client, job["id"])["data"]) == 2, 120, "timed out waiting for the redelivery")
        ids = [r.headers["webhook-id"] for r, _ in httpserver_ipv4.log if r.path == "/e2e/ok"]
        assert len(ids) == 2 and ids[0] == ids[1]


def test_a_receiver_failing_twice_gets_three_attempts_and_one_success(
    api, worker, clean_state, httpserver_ipv4: HTTPServer
) -> None:
    url = httpserver_ipv4.url_for("/e2e/flaky")
    httpserver_ipv4.expect_ordered_request("/e2e/flaky").respond_with_data("down", status=503)
    httpserver_ipv4.expect_ordered_request("/e2e/flaky").respond_with_data("down", status=500)
    httpserver_ipv4.expect_ordered_request("/e2e/flaky").respond_with_data("ok", status=200)
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        client.post("/webhook-endpoints", json={"url": url})
        job = client.post("/jobs/embeddings", json={"input": ["flaky receiver"], "webhook_url": url}).json()
        wait_until(lambda: _settled(client, job["id"]), 120, "timed out waiting for the event to settle")
        log = deliveries(client, job["id"])
    assert [(row["status_code"], row["succeeded"]) for row in log["data"]] == [(503, False), (500, False), (200, True)]
    assert [row["attempt"] for row in log["data"]] == [1, 2, 3]
    assert log["events"][0]["status"] == "succeeded"


def _settled(client: httpx.Client, job_id: str) -> bool:
    events = deliveries(client, job_id)["events"]
    return bool(events) and events[0]["status"] in ("succeeded", "failed")
