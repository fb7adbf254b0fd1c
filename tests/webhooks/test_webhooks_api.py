"""The webhooks HTTP API in-process, on real Postgres and Redis (no worker: delivery tasks wait in the queue)."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app


@pytest.fixture
def client(clean_state) -> TestClient:
    return TestClient(create_app())


def queued_deliveries(redis_client: redis.Redis) -> list[list]:
    messages = [json.loads(m) for m in redis_client.lrange("webhooks", 0, -1)]
    assert all(m["headers"]["task"] == "webhook.deliver" for m in messages)
    return [json.loads(base64.b64decode(m["body"]))[0] for m in messages]


def test_an_endpoint_shows_its_secret_once(client: TestClient) -> None:
    r = client.post("/webhook-endpoints", json={"url": "http://127.0.0.1:9/hook", "description": "ci"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret"].startswith("whsec_") and r.headers["location"] == f"/webhook-endpoints/{created['id']}"
    assert created["enabled"] and not created["auto_created"]
    listed = client.get("/webhook-endpoints").json()["data"]
    assert [e["id"] for e in listed] == [created["id"]] and "secret" not in listed[0]
    assert "secret" not in client.get(f"/webhook-endpoints/{created['id']}").json()

    rotated = client.post(f"/webhook-endpoints/{created['id']}/rotate-secret", json={"overlap_seconds": 60}).json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    assert rotated["previous_secret_expires_at"] is not None

    patched = client.patch(f"/webhook-endpoints/{created['id']}", json={"enabled": False}).json()
    assert not patched["enabled"] and patched["disabled_reason"] == "disabled by request"
    assert client.delete(f"/webhook-endpoints/{created['id']}").status_code == 204
    assert client.get(f"/webhook-endpoints/{created['id']}").status_code == 404


@pytest.mark.parametrize("url", ["http://10.0.0.5/hook", "http://169.254.169.254/latest/meta-data/"])
def test_endpoints_on_internal_addresses_are_refused(client: TestClient, url: str) -> None:
    r = client.post("/webhook-endpoints", json={"url": url})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "unsafe_webhook_url" and "EMBEDQ_WEBHOOK_ALLOWED_CIDRS" in body["detail"]


def test_a_job_with_an_internal_webhook_url_is_refused(client: TestClient) -> None:
    r = client.post("/jobs/embeddings", json={"input": ["a"], "webhook_url": "http://192.168.1.1/hook"})
    assert r.status_code == 422 and "private address 192.168.1.1" in r.text
    r = client.post("/jobs/embeddings", json={"input": ["a"], "webhook_url": "ftp://example.com/hook"})
    assert r.status_code == 422


def test_a_finished_job_owes_an_event_and_redelivery_requeues_it(client: TestClient, redis_client) -> None:
    hook = client.post("/webhook-endpoints", json={"url": "http://127.0.0.1:9/done"}).json()
    job = client.post("/jobs/embeddings", json={"input": ["a"], "webhook_url": "http://127.0.0.1:9/done"}).json()
    assert client.post(f"/jobs/{job['id']}/webhook-deliveries/redeliver").status_code == 409
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 200

    log = client.get(f"/jobs/{job['id']}/webhook-deliveries").json()
    [event] = log["events"]
    assert event["type"] == "job.cancelled" and event["endpoint_id"] == hook["id"] and event["status"] == "pending"
    assert log["data"] == []
    # The job id leads the task's arguments, so Flower finds a job's webhook tasks by searching for it.
    assert queued_deliveries(redis_client) == [[job["id"], str(uuid.UUID(event["id"][4:])), 0]]

    r = client.post(f"/jobs/{job['id']}/webhook-deliveries/redeliver")
    assert r.status_code == 202 and r.json()["events"][0]["id"] == event["id"]
    tokens = sorted(args[2] for args in queued_deliveries(redis_client))
    assert tokens == [0, 1]


def test_deliveries_of_an_unknown_job_are_404(client: TestClient) -> None:
    assert client.get(f"/jobs/{uuid.uuid4()}/webhook-deliveries").status_code == 404
    assert client.post(f"/jobs/{uuid.uuid4()}/webhook-deliveries/redeliver").status_code == 404


def test_all_jobs_endpoints_hear_about_jobs_without_a_webhook_url(client: TestClient) -> None:
    hook = client.post("/webhook-endpoints", json={"url": "http://127.0.0.1:9/all", "all_jobs": True}).json()
    job = client.post("/jobs/embeddings", json={"input": ["a"]}).json()
    client.post(f"/jobs/{job['id']}/cancel")
    [event] = client.get(f"/jobs/{job['id']}/webhook-deliveries").json()["events"]
    assert event["endpoint_id"] == hook["id"]
