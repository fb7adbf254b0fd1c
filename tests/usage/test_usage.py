"""GET /usage, the per-tenant metrics' label cap, and the key's rate limit on jobs: in-process, on the session's
real Postgres and Redis (jobs are run here with stand-in vectors; no worker runs)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from support.settings import SettingsEnv
from support.tiny_models import in_models_dir
from support.vectors import fake_encode

from app.core.db import session_scope
from app.jobs.service import run_embedding_batch
from app.keys.service import create_key
from app.main import create_app
from app.observability.tenant_metrics import tenant_families
from app.usage.repository import KindUsage

MODEL = "tiny-usage"


@pytest.fixture(scope="module", autouse=True)
def tiny_model(session_services) -> None:
    in_models_dir(MODEL)


@pytest.fixture
def client(clean_state, settings_env: SettingsEnv) -> Iterator[TestClient]:
    settings_env.set(EMBEDQ_AUTH_DISABLED="false", EMBEDQ_TENANT_METRICS_MAX_TENANTS="1")
    settings_env.unset("EMBEDQ_API_KEYS")
    with TestClient(create_app()) as test_client:
        yield test_client


def key(tenant: str, **kw) -> dict[str, str]:
    with session_scope() as session:
        _, raw = create_key(session, tenant=tenant, **kw)
    return {"Authorization": f"Bearer {raw}"}


def run_job(client: TestClient, headers: dict[str, str], texts: list[str]) -> str:
    created = client.post("/jobs/embeddings", json={"input": texts, "model": MODEL}, headers=headers)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    run_embedding_batch(session_scope, uuid.UUID(job_id), range(0, len(texts)), fake_encode)
    return job_id


def test_usage_sums_each_tenants_jobs_and_admins_see_every_tenant(client: TestClient) -> None:
    acme, globex, admin = key("acme"), key("globex"), key("ops", is_admin=True)
    run_job(client, acme, ["one two", "three"])
    run_job(client, acme, ["four five six"])
    old = run_job(client, globex, ["seven eight"])
    with session_scope() as session:
        session.execute(text("UPDATE jobs SET created_at = '2020-01-01T00:00:00Z' WHERE id = :id"), {"id": old})

    own = client.get("/usage", headers=acme).json()
    assert own["data"] == [
        {"tenant": "acme", "jobs": 2, "jobs_by_kind": {"embeddings": 2}, "inputs": 3, "chunks": 0, "tokens": 6,
         "training_steps": 0}
    ]  # fmt: skip
    everyone = client.get("/usage", headers=admin).json()["data"]
    assert [(u["tenant"], u["jobs"], u["tokens"]) for u in everyone] == [("acme", 2, 6), ("globex", 1, 2)]
    recent = client.get("/usage", params={"from": "2021-01-01T00:00:00"}, headers=admin).json()
    assert [u["tenant"] for u in recent["data"]] == ["acme"] and recent["from"].startswith("2021-01-01T00:00:00")
    assert client.get("/usage", params={"to": "2021-01-01"}, headers=globex).json()["data"][0]["jobs"] == 1
    assert [u["tenant"] for u in client.get("/usage", params={"tenant": "globex"}, headers=admin).json()["data"]] == [
        "globex"
    ]


def test_usage_refuses_another_tenant_and_a_window_that_ends_before_it_starts(client: TestClient) -> None:
    acme = key("acme")
    assert client.get("/usage", params={"tenant": "globex"}, headers=acme).status_code == 404
    assert client.get("/usage", params={"tenant": "acme"}, headers=acme).status_code == 200
    backwards = client.get("/usage", params={"from": "2026-02-01", "to": "2026-01-01"}, headers=acme)
    assert backwards.status_code == 422 and "before" in backwards.json()["detail"]
    assert client.get("/usage", params={"from": "yesterday"}, headers=acme).status_code == 422
    assert client.get("/usage").status_code == 401


def test_metrics_label_the_busiest_tenants_and_fold_the_rest_into_other(client: TestClient) -> None:
    acme, globex, admin = key("acme"), key("globex"), key("ops", is_admin=True)
    run_job(client, acme, ["a b c d e f"])
    run_job(client, globex, ["g"])
    run_job(client, key("initech"), ["h i"])
    exposition = client.get("/metrics", headers=admin).text
    assert 'embedq_tenant_tokens_total{tenant="acme"} 6.0' in exposition
    assert 'embedq_tenant_tokens_total{tenant="other"} 3.0' in exposition
    assert 'embedq_tenant_jobs_total{kind="embeddings",tenant="other"} 2.0' in exposition
    assert 'tenant="globex"' not in exposition and 'tenant="initech"' not in exposition


def test_the_label_cap_counts_every_row_once_and_zero_tracks_nobody() -> None:
    rows = [
        KindUsage("a", "embeddings", 2, 10, 0, 100, 0),
        KindUsage("b", "ingest", 1, 5, 7, 300, 0),
        KindUsage("c", "fine_tune", 1, 0, 0, 0, 40),
    ]
    for cap, labels in ((0, {"other"}), (1, {"b", "other"}), (5, {"a", "b", "c"})):
        families = {f.name: f for f in tenant_families(rows, cap)}
        tokens = {s.labels["tenant"]: s.value for s in families["embedq_tenant_tokens"].samples}
        assert set(tokens) == labels and sum(tokens.values()) == 400
        steps = families["embedq_tenant_training_steps"].samples
        assert sum(s.value for s in steps) == 40


def test_a_key_s_requests_per_minute_count_its_jobs_too(client: TestClient) -> None:
    limited = key("acme", requests_per_minute=1)
    assert client.post("/jobs/embeddings", json={"input": ["x"], "model": MODEL}, headers=limited).status_code == 202
    refused = client.post("/jobs/embeddings", json={"input": ["y"], "model": MODEL}, headers=limited)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "requests in the last minute" in refused.json()["detail"]
