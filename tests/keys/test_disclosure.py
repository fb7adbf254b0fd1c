"""A key that is not admin sees no server paths, host names, pids or state directories (issue 16, point 4).

A tour of the API in-process, on the session's real Postgres and Redis, with auth on: every response a
tenant gets is scanned for the server's internals; an admin key still sees the detail. No worker runs:
a model load is planted in Redis as a worker records it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi.testclient import TestClient
from support.settings import SettingsEnv
from support.tiny_models import in_models_dir

from app.catalog.loads import ModelLoad, record_load
from app.core.config import DEFAULT_MODEL, get_settings
from app.core.db import session_scope
from app.keys.service import create_key
from app.main import create_app
from app.models.registered_model import RegisteredModel

WORKER = "build-host-7:48213"  # host:pid, as a worker reports its loads
TUNED = "tour-tuned"
SCRAPE_TOKEN = "scrape-token-for-tests"


@pytest.fixture
def client(clean_state, redis_client, settings_env: SettingsEnv) -> Iterator[TestClient]:
    settings_env.set(
        EMBEDQ_AUTH_DISABLED="false",
        EMBEDQ_SYNC_TIMEOUT_S="0.3",
        EMBEDQ_WEBHOOK_ALLOWED_CIDRS="",
        EMBEDQ_METRICS_TOKEN=SCRAPE_TOKEN,
    )
    settings_env.unset("EMBEDQ_API_KEYS")
    folder = in_models_dir(TUNED)
    with session_scope() as session:
        session.add(
            RegisteredModel(name=TUNED, base=DEFAULT_MODEL, kind="full", path=str(folder), dimension=32, tenant="acme")
        )
    record_load(redis_client, planted_load(str(folder)))
    with TestClient(create_app()) as test_client:
        yield test_client


def planted_load(path: str) -> ModelLoad:
    return ModelLoad(
        worker=WORKER, settings="auto|torch|", name=TUNED, family="generic", dimension=32, max_seq_length=128,
        precision="fp32", backend="torch", device="cpu", pooling="mean", normalize=True, hybrid=False, path=path,
        source="models_dir", load_seconds=0.4, loaded_at="2026-01-01T00:00:00+00:00",
    )  # fmt: skip


@dataclass
class Tour:
    client: TestClient
    headers: dict[str, str]
    seen: list[tuple[str, httpx.Response]]

    def call(self, method: str, path: str, **kw) -> httpx.Response:
        r = self.client.request(method, path, headers=self.headers, **kw)
        self.seen.append((f"{method} {path}", r))
        return r


def key(admin: bool) -> dict[str, str]:
    with session_scope() as session:
        _, raw = create_key(session, tenant="acme", is_admin=admin)
    return {"Authorization": f"Bearer {raw}"}


def tour(client: TestClient, headers: dict[str, str]) -> Tour:
    """Visit every kind of answer that could carry an internal: models, errors, webhooks, jobs, metrics."""
    t = Tour(client, headers, [])
    t.call("GET", "/v1/models")
    t.call("GET", f"/v1/models/{TUNED}")
    t.call("GET", f"/v1/models/{DEFAULT_MODEL}")
    t.call("GET", "/v1/models/no-such-model")
    t.call("POST", "/v1/embeddings", json={"input": "a", "model": "no-such-model"})
    t.call("POST", "/tokenize", json={"input": "a", "model": "no-such-model"})
    t.call("POST", "/jobs/embeddings", json={"input": ["a"], "model": "no-such-model"})
    t.call("POST", "/collections", json={"name": "tour", "model": "no-such-model"})
    t.call("POST", "/collections", json={"name": "tour"})
    t.call("GET", "/collections")
    t.call("GET", "/collections/tour")
    t.call("POST", "/collections/tour/search", json={"query": "q", "model": "no-such-model"})
    t.call("POST", "/webhook-endpoints", json={"url": "http://localhost:18082/"})
    t.call("POST", "/jobs/embeddings", json={"input": ["a"], "webhook_url": "http://localhost:18082/hook"})
    t.call("POST", "/jobs/embeddings", json={"input": ["a"]})
    t.call("GET", "/jobs")
    t.call("GET", "/fine-tuned-models")
    t.call("GET", "/metrics")
    t.call("GET", "/healthz")
    t.call("POST", "/v1/embeddings", json={"input": "a"})  # 504: no worker
    return t


def internals() -> list[str]:
    settings = get_settings()
    return [
        str(settings.state_dir),
        str(settings.models_dir),
        WORKER,
        "build-host-7",
        socket.gethostname(),
        "127.0.0.1",  # what localhost resolves to
        "/tmp/",
        "site-packages",
    ]


def test_a_tenant_sees_no_internals_anywhere_on_the_tour(client: TestClient) -> None:
    visited = tour(client, key(admin=False))
    leaks = [
        f"{where}: {marker!r} in {r.text[:300]}"
        for where, r in visited.seen
        for marker in internals()
        if marker in r.text
    ]
    assert leaks == []
    statuses = {where: r.status_code for where, r in visited.seen}
    assert statuses["GET /v1/models"] == 200 and statuses[f"GET /v1/models/{TUNED}"] == 200
    assert statuses["GET /v1/models/no-such-model"] == 404 and statuses["GET /metrics"] == 403
    assert statuses["POST /webhook-endpoints"] == 422
    model = next(r for w, r in visited.seen if w == f"GET /v1/models/{TUNED}").json()
    assert model["path"] is None and model["loads"][0]["worker"] is None and model["loads"][0]["device"] == "cpu"


def test_an_admin_keeps_the_detail(client: TestClient) -> None:
    admin = tour(client, key(admin=True))
    answers = {where: r for where, r in admin.seen}
    model = answers[f"GET /v1/models/{TUNED}"].json()
    assert model["path"] == str(get_settings().models_dir / TUNED) and model["loads"][0]["worker"] == WORKER
    assert answers["GET /fine-tuned-models"].json()[0]["path"].startswith(str(get_settings().models_dir))
    assert "loopback address 127.0.0.1" in answers["POST /webhook-endpoints"].text
    assert answers["GET /metrics"].status_code == 200 and "embedq_jobs" in answers["GET /metrics"].text


def test_metrics_need_an_admin_key_or_the_scrape_token(client: TestClient) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    scraped = client.get("/metrics", headers={"Authorization": f"Bearer {SCRAPE_TOKEN}"})
    assert scraped.status_code == 200 and "embedq_jobs" in scraped.text
    refused = client.get("/metrics", headers=key(admin=False))
    assert refused.status_code == 403 and "EMBEDQ_METRICS_TOKEN" in refused.json()["detail"]


def test_a_training_error_names_the_settings_not_the_server_paths(tmp_path) -> None:
    from app.core.config import Settings
    from app.core.redaction import without_server_paths

    settings = Settings(state_dir=tmp_path / "state", models_dir=tmp_path / "state" / "models")
    error = f"OSError: [Errno 28] No space left on device: '{tmp_path}/state/models/.staging/job-1/model.safetensors'"
    scrubbed = without_server_paths(error, settings)
    assert str(tmp_path) not in scrubbed
    assert scrubbed.endswith("device: '$EMBEDQ_MODELS_DIR/.staging/job-1/model.safetensors'")
