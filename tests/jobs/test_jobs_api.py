"""The jobs HTTP API in-process, on real Postgres and Redis (no worker: tasks wait in the queue)."""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi.testclient import TestClient
from support.settings import SettingsEnv

from app.main import create_app


@pytest.fixture
def client(clean_state) -> TestClient:
    return TestClient(create_app())


def post_job(client: TestClient, body: object):
    return client.post("/jobs/embeddings", content=json.dumps(body), headers={"content-type": "application/json"})


def test_post_returns_202_with_links_and_queues_one_task_per_batch(client: TestClient, redis_client) -> None:
    r = post_job(client, {"input": ["a", "b", "c"]})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["counts"] == {"total": 3, "done": 0, "failed": 0}
    assert job["links"]["results"] == f"/jobs/{job['id']}/results"
    assert r.headers["location"] == f"/jobs/{job['id']}"
    assert job["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    # The task is in Redis only because the job row committed first.
    messages = [json.loads(m) for m in redis_client.lrange("inference", 0, -1)]
    assert [m["headers"]["task"] for m in messages] == ["embed.batch"]
    assert messages[0]["headers"]["argsrepr"].startswith(f"['{job['id']}'")
    assert client.get(job["links"]["self"]).json()["id"] == job["id"]


def test_idempotency_key_over_http(client: TestClient) -> None:
    first = post_job(client, {"input": ["a"], "idempotency_key": "abc"})
    second = post_job(client, {"input": ["a"], "idempotency_key": "abc"})
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["id"] == second.json()["id"]
    clash = post_job(client, {"input": ["b"], "idempotency_key": "abc"})
    assert clash.status_code == 409 and "different request" in clash.json()["detail"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"input": []}, "at least 1 item"),
        ({"input": ["ok", ""]}, "input[1] is empty"),
        ({"input": ["ok", "  "]}, "input[1] is empty"),
        ({"input": ["ok", 3]}, "valid string"),
        ({"input": "not a list"}, "valid list"),
        ({"input": ["a\u0000b"]}, "NUL"),
        ({"input": ["a"], "model": "no-such-model"}, "known models"),
        ({"input": ["a"], "model": "../../etc/passwd"}, "model"),
        ({"input": ["a"], "surprise": 1}, "Extra inputs are not permitted"),
        ({"input": ["a"], "webhook_url": "ftp://x"}, "URL scheme"),
        ({}, "Field required"),
    ],
)
def test_bad_input_is_a_4xx_that_says_what_to_fix(client: TestClient, body: object, needle: str) -> None:
    r = post_job(client, body)
    assert 400 <= r.status_code < 500, r.text
    assert needle in r.text


def test_too_many_inputs_names_the_limit(client: TestClient) -> None:
    r = post_job(client, {"input": ["x"] * 2049})
    assert r.status_code == 422 and "at most 2048 per job" in r.json()["detail"]


def test_malformed_json_is_a_4xx(client: TestClient) -> None:
    r = client.post("/jobs/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_unknown_and_malformed_job_ids(client: TestClient) -> None:
    missing = uuid.uuid4()
    for path in (f"/jobs/{missing}", f"/jobs/{missing}/results"):
        r = client.get(path)
        assert r.status_code == 404 and str(missing) in r.json()["detail"]
    assert client.post(f"/jobs/{missing}/cancel").status_code == 404
    r = client.get("/jobs/not-a-uuid")
    assert r.status_code == 422 and "UUID" in r.text


def test_list_filters_are_validated(client: TestClient) -> None:
    post_job(client, {"input": ["a"]})
    assert client.get("/jobs", params={"status": "queued"}).json()["data"][0]["status"] == "queued"
    assert client.get("/jobs", params={"status": "bogus"}).status_code == 422
    assert client.get("/jobs", params={"limit": 0}).status_code == 422
    assert client.get("/jobs", params={"status": "succeeded"}).json() == {"data": [], "next_offset": None}


def test_cancel_over_http(client: TestClient) -> None:
    job = post_job(client, {"input": ["a", "b"]}).json()
    r = client.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"


def test_api_keys_are_enforced_when_configured(clean_state, settings_env: SettingsEnv) -> None:
    settings_env.set(EMBEDQ_API_KEYS='["sk-test-1"]', EMBEDQ_AUTH_DISABLED="false")
    client = TestClient(create_app())
    assert client.get("/jobs").status_code == 401
    assert client.get("/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/jobs", headers={"Authorization": "Bearer sk-test-1"}).status_code == 200
    assert client.get("/healthz").status_code == 200


def test_readyz_names_missing_workers(client: TestClient) -> None:
    r = client.get("/readyz")
    body = r.json()
    assert body["checks"]["database"] == "ok" and body["checks"]["redis"] == "ok"
    assert (r.status_code == 200) == body["ready"] == all(v == "ok" for v in body["checks"].values())
    # No worker runs in this module (its tasks wait in the queue): readiness says so, and how to start one.
    assert r.status_code == 503 and "embedq worker" in body["checks"]["workers"], body


def test_redis_down_is_reported_by_readyz(clean_state, settings_env: SettingsEnv) -> None:
    settings_env.set(EMBEDQ_REDIS_URL="redis://127.0.0.1:1/0")
    r = TestClient(create_app()).get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["redis"].startswith("unreachable")
