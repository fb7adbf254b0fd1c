"""Keys and tenants over HTTP, in-process, on the session's real Postgres and Redis (no worker runs here).

Keys are made as the CLI makes them (``app.keys.service``, committed); each test turns auth on.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from support.settings import SettingsEnv
from support.tiny_models import in_models_dir

from app.cli.main import main as embedq
from app.cli.up import UpOptions, banner
from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.core.security import Principal
from app.main import create_app
from app.models.registered_model import RegisteredModel
from app.training.schemas import FineTuneRequest
from app.training.service import create_training_job

MODEL = "tiny-tenants"
TUNED = "acme-tuned"
HOOK = "http://127.0.0.1:9/hook"  # allowed by the session's EMBEDQ_WEBHOOK_ALLOWED_CIDRS; nothing is sent here


@pytest.fixture(scope="module", autouse=True)
def tiny_models(session_services) -> None:
    for name in (MODEL, TUNED):
        in_models_dir(name)


@pytest.fixture
def auth_on(clean_state, settings_env: SettingsEnv) -> SettingsEnv:
    """Turn auth on, with no EMBEDQ_API_KEYS and a short sync timeout (no sync worker answers here)."""
    settings_env.set(EMBEDQ_AUTH_DISABLED="false", EMBEDQ_SYNC_TIMEOUT_S="0.5")
    settings_env.unset("EMBEDQ_API_KEYS")
    return settings_env


@pytest.fixture
def client(auth_on: SettingsEnv) -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


def make_key(tenant: str, **kw) -> str:
    from app.keys.service import create_key

    with session_scope() as session:
        _, raw = create_key(session, tenant=tenant, **kw)
    return raw


@dataclass
class Caller:
    client: TestClient
    key: str

    def _h(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def get(self, path: str, **kw):
        return self.client.get(path, headers=self._h(), **kw)

    def post(self, path: str, **kw):
        return self.client.post(path, headers=self._h(), **kw)

    def patch(self, path: str, **kw):
        return self.client.patch(path, headers=self._h(), **kw)

    def delete(self, path: str, **kw):
        return self.client.delete(path, headers=self._h(), **kw)


@pytest.fixture
def acme(client: TestClient) -> Caller:
    return Caller(client, make_key("acme", name="acme app"))


@pytest.fixture
def globex(client: TestClient) -> Caller:
    return Caller(client, make_key("globex"))


@pytest.fixture
def admin(client: TestClient) -> Caller:
    return Caller(client, make_key("ops", is_admin=True))


def known_in(message: str) -> str:
    """Return the "known models" list of an unknown-model error."""
    return message.split("known models:")[1].split(". Put")[0]


def new_job(caller: Caller, **extra) -> dict:
    r = caller.post("/jobs/embeddings", json={"input": ["a", "b"], "model": MODEL, **extra})
    assert r.status_code == 202, r.text
    return r.json()


# Keys.


def test_keys_are_stored_as_a_hash_of_their_secret(auth_on, db_engine: Engine) -> None:
    raw = make_key("acme")
    prefix, key_id, secret = raw.split("_", 2)
    assert prefix == "eq" and len(key_id) == 12 and len(secret) == 43
    with db_engine.connect() as connection:
        rows = [tuple(map(str, row)) for row in connection.execute(text("SELECT * FROM api_keys"))]
        stored = connection.execute(text("SELECT secret_sha256 FROM api_keys WHERE id = :i"), {"i": key_id}).scalar()
    assert len(rows) == 1 and not any(secret in cell or raw in cell for cell in rows[0])
    assert stored == hashlib.sha256(secret.encode()).hexdigest()


def test_missing_unknown_malformed_and_revoked_keys_get_401(client: TestClient, acme: Caller) -> None:
    from app.keys.service import revoke_key

    assert acme.get("/jobs").status_code == 200
    missing = client.get("/jobs")
    assert missing.status_code == 401 and "embedq keys create" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    key_id = acme.key.split("_")[1]
    for bad in (acme.key[:-1] + ("A" if acme.key[-1] != "A" else "B"), f"eq_{key_id}_short", "eq_zz"):
        assert client.get("/jobs", headers={"Authorization": f"Bearer {bad}"}).status_code == 401, bad
    assert client.get("/jobs", headers={"Authorization": b"Bearer cl\xe9"}).status_code == 401  # not ASCII
    with session_scope() as session:
        revoke_key(session, key_id)
    assert acme.get("/jobs").status_code == 401
    assert acme.post("/v1/embeddings", json={"input": "a"}).status_code == 401
    assert client.get("/healthz").status_code == 200


def test_the_cli_creates_lists_and_revokes_keys(client: TestClient) -> None:
    runner = CliRunner()
    created = runner.invoke(embedq, ["keys", "create", "--tenant", "acme", "--name", "ci", "--rpm", "5"])
    assert created.exit_code == 0, created.output
    raw = created.stdout.strip()
    assert raw.startswith("eq_") and "not shown again" in created.stderr
    key_id = raw.split("_")[1]
    assert client.get("/jobs", headers={"Authorization": f"Bearer {raw}"}).status_code == 200
    listed = runner.invoke(embedq, ["keys", "list"])
    assert listed.exit_code == 0 and key_id in listed.stdout and "acme" in listed.stdout and raw not in listed.stdout
    revoked = runner.invoke(embedq, ["keys", "revoke", key_id])
    assert revoked.exit_code == 0 and f"revoked key {key_id}" in revoked.stdout
    assert client.get("/jobs", headers={"Authorization": f"Bearer {raw}"}).status_code == 401
    assert key_id not in runner.invoke(embedq, ["keys", "list"]).stdout
    assert key_id in runner.invoke(embedq, ["keys", "list", "--all", "--json"]).stdout
    unknown = runner.invoke(embedq, ["keys", "revoke", "000000000000"])
    assert unknown.exit_code != 0 and "no API key" in unknown.output
    bad_tenant = runner.invoke(embedq, ["keys", "create", "--tenant", "Not A Tenant"])
    assert bad_tenant.exit_code != 0 and "invalid tenant" in bad_tenant.output


# Ownership: another tenant gets 404, an admin sees everything.


def test_jobs_of_another_tenant_are_404_and_admins_see_all(acme: Caller, globex: Caller, admin: Caller) -> None:
    job = new_job(acme)
    mine = new_job(globex)
    for path in (
        f"/jobs/{job['id']}",
        f"/jobs/{job['id']}/results",
        f"/jobs/{job['id']}/webhook-deliveries",
        f"/jobs/{job['id']}/errors",
        f"/train-status/{job['id']}",
    ):
        assert globex.get(path).status_code == 404, path
    assert globex.post(f"/jobs/{job['id']}/cancel").status_code == 404
    assert globex.post(f"/jobs/{job['id']}/webhook-deliveries/redeliver").status_code == 404
    assert [j["id"] for j in globex.get("/jobs").json()["data"]] == [mine["id"]]
    assert acme.get(f"/jobs/{job['id']}").status_code == 200
    assert {j["id"] for j in admin.get("/jobs").json()["data"]} == {job["id"], mine["id"]}
    assert admin.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"


def test_idempotency_keys_are_per_tenant(acme: Caller, globex: Caller) -> None:
    first = new_job(acme, idempotency_key="same")
    other = globex.post("/jobs/embeddings", json={"input": ["other"], "model": MODEL, "idempotency_key": "same"})
    assert other.status_code == 202 and other.json()["id"] != first["id"]


def test_training_jobs_are_404_for_another_tenant(acme: Caller, globex: Caller, admin: Caller) -> None:
    pairs = "\n".join(f"question {i}\tanswer number {i}" for i in range(40))
    request = FineTuneRequest(model_name="acme-model", base_model=MODEL, text_content=pairs)
    with session_scope() as session:
        job = create_training_job(session, request, pairs, "auto", Settings(), Principal("acme", False, None))
    assert acme.get(f"/train-status/{job.id}").status_code == 200
    assert globex.get(f"/train-status/{job.id}").status_code == 404
    assert admin.get(f"/train-status/{job.id}").status_code == 200
    # The alias is one namespace: another tenant learns only that it is taken, not by whom.
    taken = globex.post(
        "/fine-tune", json={"model_name": "acme-model", "base_model": MODEL, "text_content": pairs, "overwrite": True}
    )
    assert taken.status_code == 409 and str(job.id) not in taken.text and "taken" in taken.json()["detail"]


def test_collections_are_per_tenant(acme: Caller, globex: Caller, admin: Caller) -> None:
    assert acme.post("/collections", json={"name": "docs", "model": MODEL}).status_code == 201
    upload = acme.post("/collections/docs/documents", json=[{"id": "1", "text": "hello"}])
    assert upload.status_code == 202, upload.text
    assert globex.get("/collections/docs").status_code == 404
    assert globex.get("/collections").json()["data"] == []
    assert globex.post("/collections/docs/search", json={"query": "hi"}).status_code == 404
    assert globex.post("/collections/docs/documents", json=[{"id": "2", "text": "x"}]).status_code == 404
    assert globex.post("/collections/docs/reembed", json={"model": MODEL}).status_code == 404
    assert globex.get("/collections/docs/export").status_code == 404
    assert globex.get(f"/jobs/{upload.json()['id']}/errors").status_code == 404
    assert globex.delete("/collections/docs").status_code == 404
    # Names are per tenant: globex may have its own "docs" without learning of acme's.
    assert globex.post("/collections", json={"name": "docs", "model": MODEL}).status_code == 201
    assert acme.get("/collections/docs").json()["counts"]["documents"] == 1
    assert globex.get("/collections/docs").json()["counts"]["documents"] == 0
    names = [(c["name"]) for c in admin.get("/collections").json()["data"]]
    assert names == ["docs", "docs"]
    ambiguous = admin.get("/collections/docs")
    assert ambiguous.status_code == 409 and "acme" in ambiguous.json()["detail"]
    assert globex.delete("/collections/docs").status_code == 204
    assert admin.get("/collections/docs").json()["counts"]["documents"] == 1  # only acme's is left


def test_webhook_endpoints_are_per_tenant(acme: Caller, globex: Caller, admin: Caller) -> None:
    created = acme.post("/webhook-endpoints", json={"url": HOOK})
    assert created.status_code == 201, created.text
    endpoint = created.json()["id"]
    assert globex.get(f"/webhook-endpoints/{endpoint}").status_code == 404
    assert globex.patch(f"/webhook-endpoints/{endpoint}", json={"enabled": False}).status_code == 404
    assert globex.post(f"/webhook-endpoints/{endpoint}/rotate-secret").status_code == 404
    assert globex.delete(f"/webhook-endpoints/{endpoint}").status_code == 404
    assert globex.get("/webhook-endpoints").json()["data"] == []
    assert [e["id"] for e in admin.get("/webhook-endpoints").json()["data"]] == [endpoint]
    assert acme.get(f"/webhook-endpoints/{endpoint}").json()["enabled"] is True


def test_default_endpoints_get_the_jobs_of_their_tenant_only(acme: Caller, globex: Caller) -> None:
    default = acme.post("/webhook-endpoints", json={"url": HOOK, "all_jobs": True}).json()["id"]
    ours, theirs = new_job(acme), new_job(globex)
    for caller, job in ((acme, ours), (globex, theirs)):
        assert caller.post(f"/jobs/{job['id']}/cancel").status_code == 200
    [event] = acme.get(f"/jobs/{ours['id']}/webhook-deliveries").json()["events"]
    assert event["endpoint_id"] == default and event["type"] == "job.cancelled"
    assert globex.get(f"/jobs/{theirs['id']}/webhook-deliveries").json()["events"] == []
    # A job's own webhook_url makes an endpoint of the job's tenant, never reusing another tenant's.
    named = new_job(globex, webhook_url=HOOK)
    globex.post(f"/jobs/{named['id']}/cancel")
    [auto] = globex.get("/webhook-endpoints").json()["data"]
    assert auto["auto_created"] and auto["id"] != default


def test_fine_tuned_models_are_unknown_to_other_tenants(acme: Caller, globex: Caller, admin: Caller) -> None:
    models_dir = get_settings().models_dir
    assert models_dir is not None
    with session_scope() as session:
        session.add(
            RegisteredModel(
                name=TUNED, base=MODEL, kind="full", path=str(models_dir / TUNED), dimension=32, tenant="acme"
            )
        )
    assert [m["name"] for m in acme.get("/fine-tuned-models").json()] == [TUNED]
    assert globex.get("/fine-tuned-models").json() == []
    assert [m["name"] for m in admin.get("/fine-tuned-models").json()] == [TUNED]
    assert TUNED in {m["id"] for m in acme.get("/v1/models").json()["data"]}
    assert TUNED not in {m["id"] for m in globex.get("/v1/models").json()["data"]}
    assert globex.get(f"/v1/models/{TUNED}").status_code == 404
    hidden = globex.post("/v1/embeddings", json={"input": "a", "model": TUNED})
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "model_not_found"
    assert TUNED not in known_in(hidden.json()["error"]["message"])
    for path, body in (("/vectorize", {"text": "a"}), ("/tokenize", {"input": "a"}), ("/rerank", {"query": "q"})):
        r = globex.post(
            path, json={**body, "model": TUNED, "candidates": ["c"]} if path == "/rerank" else {**body, "model": TUNED}
        )
        assert r.status_code == 404, (path, r.text)
    job = globex.post("/jobs/embeddings", json={"input": ["a"], "model": TUNED})
    assert job.status_code == 422 and TUNED not in known_in(job.json()["detail"])
    assert globex.post("/collections", json={"name": "c", "model": TUNED}).status_code == 422
    # Past the model check for its owner (504: no sync worker answers in this test).
    assert acme.post("/v1/embeddings", json={"input": "a", "model": TUNED}).status_code == 504
    assert new_job(acme, model=TUNED)["model"] == TUNED


# Limits.


def test_requests_per_minute_answer_429_with_retry_after(client: TestClient, redis_client) -> None:
    limited = Caller(client, make_key("acme", requests_per_minute=2))
    other = Caller(client, make_key("acme"))
    # The limit is counted before the body is read: an invalid request spends one too.
    assert [limited.post("/tokenize", json={}).status_code for _ in range(2)] == [422, 422]
    refused = limited.post("/tokenize", json={"input": "a"})
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert (
        1 <= int(refused.headers["retry-after"]) <= 60 and "2 requests in the last minute" in refused.json()["detail"]
    )
    openai = limited.post("/v1/embeddings", json={"input": "a"})
    assert (
        openai.status_code == 429 and openai.json()["error"]["code"] == "rate_limited" and openai.headers["retry-after"]
    )
    assert limited.get("/jobs").status_code == 200  # only the synchronous endpoints are limited
    assert other.post("/tokenize", json={}).status_code == 422  # per key
    assert any(k.startswith(b"embedq:rpm:") for k in redis_client.scan_iter("embedq:rpm:*"))


def test_the_global_default_rpm_applies_to_keys_without_their_own(auth_on: SettingsEnv) -> None:
    auth_on.set(EMBEDQ_DEFAULT_REQUESTS_PER_MINUTE="1")
    with TestClient(create_app()) as client:
        caller = Caller(client, make_key("acme"))
        unlimited = Caller(client, make_key("acme", requests_per_minute=0))
        assert [caller.post("/vectorize", json={}).status_code for _ in range(2)] == [422, 429]
        assert [unlimited.post("/vectorize", json={}).status_code for _ in range(3)] == [422, 422, 422]


def test_concurrent_jobs_over_the_key_limit_answer_429(client: TestClient) -> None:
    caller = Caller(client, make_key("acme", max_concurrent_jobs=1))
    first = new_job(caller)
    refused = caller.post("/jobs/embeddings", json={"input": ["b"], "model": MODEL})
    assert refused.status_code == 429 and "max_concurrent_jobs=1" in refused.json()["detail"]
    assert caller.post("/collections", json={"name": "docs", "model": MODEL}).status_code == 201
    assert caller.post("/collections/docs/documents", json=[{"id": "1", "text": "x"}]).status_code == 429
    assert Caller(client, make_key("acme")).post("/jobs/embeddings", json={"input": ["b"]}).status_code == 202
    caller.post(f"/jobs/{first['id']}/cancel")
    assert caller.post("/jobs/embeddings", json={"input": ["b"], "model": MODEL}).status_code == 202


# Single-tenant setups and auth off.


def test_env_keys_are_admins_of_the_default_tenant(auth_on: SettingsEnv) -> None:
    auth_on.set(EMBEDQ_API_KEYS="sk-one,sk-two")
    with TestClient(create_app()) as client:
        env_caller = Caller(client, "sk-two")
        acme = Caller(client, make_key("acme"))
        theirs = new_job(acme)
        ours = new_job(env_caller)
        assert env_caller.get(f"/jobs/{theirs['id']}").status_code == 200
        assert acme.get(f"/jobs/{ours['id']}").status_code == 404
        assert client.get("/jobs", headers={"Authorization": "Bearer sk-three"}).status_code == 401


def test_auth_is_off_only_when_a_setting_says_so(auth_on: SettingsEnv) -> None:
    with TestClient(create_app()) as client:
        refused = client.get("/jobs")
        assert refused.status_code == 401 and "EMBEDQ_AUTH_DISABLED" in refused.json()["detail"]
    auth_on.set(EMBEDQ_AUTH_DISABLED="true")
    with TestClient(create_app()) as client:
        job = client.post("/jobs/embeddings", json={"input": ["a"], "model": MODEL}).json()
        assert client.get(f"/jobs/{job['id']}").status_code == 200
        assert client.get("/ui").status_code == 200
    with pytest.raises(ValueError, match="refused when EMBEDQ_ENVIRONMENT=prod"):
        Settings(environment="prod", auth_disabled=True)


def test_embedq_up_turns_auth_off_explicitly_and_loudly_only_when_nothing_was_chosen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.cli.main import AUTH_OFF_WARNING, _local_auth_default

    monkeypatch.delenv("EMBEDQ_AUTH_DISABLED", raising=False)
    monkeypatch.delenv("EMBEDQ_API_KEYS", raising=False)
    monkeypatch.setenv("EMBEDQ_ENVIRONMENT", "dev")
    _local_auth_default()
    import os

    assert os.environ["EMBEDQ_AUTH_DISABLED"] == "true" and "authentication is OFF" in AUTH_OFF_WARNING
    monkeypatch.setenv("EMBEDQ_AUTH_DISABLED", "false")
    _local_auth_default()
    assert os.environ["EMBEDQ_AUTH_DISABLED"] == "false"
    monkeypatch.delenv("EMBEDQ_AUTH_DISABLED")
    monkeypatch.setenv("EMBEDQ_API_KEYS", "k")
    _local_auth_default()
    assert "EMBEDQ_AUTH_DISABLED" not in os.environ
    options = UpOptions(state_dir=None, flower=False, concurrency=None, stop_timeout=1.0)
    assert "Auth    OFF" in banner(Settings(auth_disabled=True), options)
    assert "Auth" not in banner(Settings(auth_disabled=False), options)


def test_an_unknown_job_id_and_another_tenants_look_the_same(acme: Caller, globex: Caller) -> None:
    job = new_job(acme)
    theirs = globex.get(f"/jobs/{job['id']}")
    nobody = globex.get(f"/jobs/{uuid.uuid4()}")
    assert theirs.status_code == nobody.status_code == 404
    assert theirs.json()["code"] == nobody.json()["code"] == "not_found"


def test_the_rpm_window_is_the_last_minute_shared_through_redis(session_services, redis_client) -> None:
    from app.keys.rate_limit import hit_rate_limit, rate_limit_key

    url = get_settings().redis_url
    assert url is not None
    key = f"window-{uuid.uuid4().hex}"
    assert hit_rate_limit(url, key, 2, now=6000.0) is None
    assert hit_rate_limit(url, key, 2, now=6030.2) is None
    assert hit_rate_limit(url, key, 2, now=6059.5) == 1  # two in the last minute; the first leaves at 6060
    assert hit_rate_limit(url, key, 2, now=6060.0) is None  # the one of 6000 is a minute old
    # No fresh window at a minute boundary: 6030.2 and 6060.0 are both within the minute before 6070.
    assert hit_rate_limit(url, key, 2, now=6070.0) == 21
    assert hit_rate_limit(url, key, 2, now=6090.3) is None  # refused requests were not counted
    assert 0 < redis_client.pttl(rate_limit_key(key)) <= 60_000
    # Without a time of its own the log runs on Redis's clock: a fresh key takes 2, then refuses.
    fresh = f"clock-{uuid.uuid4().hex}"
    assert [hit_rate_limit(url, fresh, 2) for _ in range(2)] == [None, None]
    assert hit_rate_limit(url, fresh, 2) in range(1, 61)
