"""The Files and Batch APIs in-process, on real Postgres and Redis (no worker: tasks wait in the queue)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from support.settings import SettingsEnv

from app.artifacts.store import ArtifactStore
from app.batches.files import delete_expired, storage_key
from app.core.config import get_settings
from app.core.db import session_scope
from app.main import create_app

ENDPOINT = "/v1/embeddings"


def jsonl(*bodies: dict[str, object]) -> bytes:
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": ENDPOINT, "body": body} for i, body in enumerate(bodies)]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


REQUESTS = jsonl({"input": "hello"}, {"input": ["a", "b"]})


@pytest.fixture
def client(clean_state) -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


def upload(client: TestClient, content: bytes = REQUESTS, purpose: str = "batch", name: str = "in.jsonl", **kw):
    return client.post(
        "/v1/files", files={"file": (name, content, "application/jsonl")}, data={"purpose": purpose}, **kw
    )


def create(client: TestClient, file_id: str, **overrides: object):
    body = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h", **overrides}
    return client.post("/v1/batches", json=body)


def test_a_file_round_trips_with_openais_shape(client: TestClient) -> None:
    r = upload(client)
    assert r.status_code == 200, r.text
    file = r.json()
    assert file["id"].startswith("file-") and file["object"] == "file"
    assert (file["bytes"], file["filename"], file["purpose"], file["status"]) == (
        len(REQUESTS),
        "in.jsonl",
        "batch",
        "processed",
    )
    assert isinstance(file["created_at"], int)
    assert client.get(f"/v1/files/{file['id']}").json() == file
    content = client.get(f"/v1/files/{file['id']}/content")
    assert content.status_code == 200 and content.content == REQUESTS
    deleted = client.delete(f"/v1/files/{file['id']}")
    assert deleted.json() == {"id": file["id"], "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file['id']}").status_code == 404


def test_files_list_newest_first_in_pages_with_a_purpose_filter(client: TestClient) -> None:
    ids = [upload(client, name=f"{i}.jsonl").json()["id"] for i in range(5)]
    first = client.get("/v1/files", params={"limit": 2}).json()
    assert first["object"] == "list" and first["has_more"] is True
    assert [f["id"] for f in first["data"]] == ids[::-1][:2] == [first["first_id"], first["last_id"]]
    rest = client.get("/v1/files", params={"limit": 10, "after": first["last_id"]}).json()
    assert [f["id"] for f in rest["data"]] == ids[::-1][2:] and rest["has_more"] is False
    assert client.get("/v1/files", params={"purpose": "batch_output"}).json()["data"] == []
    oldest = client.get("/v1/files", params={"limit": 3, "order": "asc"}).json()
    assert [f["id"] for f in oldest["data"]] == ids[:3] and oldest["has_more"] is True
    after = client.get("/v1/files", params={"order": "asc", "after": oldest["last_id"]}).json()
    assert [f["id"] for f in after["data"]] == ids[3:]
    assert client.get("/v1/files", params={"order": "sideways"}).status_code == 400


@pytest.mark.parametrize(
    ("request_kw", "status", "needle"),
    [
        ({"purpose": "fine-tune"}, 400, "purpose='batch' only"),
        ({"purpose": ""}, 400, "purpose='batch' only"),
    ],
)
def test_upload_refusals_name_the_fix(client: TestClient, request_kw: dict[str, str], status: int, needle: str) -> None:
    r = upload(client, **request_kw)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"] and error["param"] == "purpose"
    assert client.get("/v1/files").json()["data"] == []  # nothing was kept


def test_an_upload_that_is_not_multipart_is_a_400(client: TestClient) -> None:
    r = client.post("/v1/files", content=REQUESTS, headers={"content-type": "application/jsonl"})
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]["message"]


def test_an_upload_cut_off_before_its_closing_boundary_is_a_400_and_keeps_nothing(client: TestClient) -> None:
    whole = (
        b'--cut\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--cut\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n\r\n'
        + REQUESTS
        + b"\r\n--cut--\r\n"
    )
    headers = {"content-type": "multipart/form-data; boundary=cut"}
    # Cut at a line end, inside the file part: every line it holds is valid, so only the envelope tells.
    cut = whole[: whole.index(REQUESTS) + REQUESTS.index(b"\n") + 1]
    r = client.post("/v1/files", content=cut, headers=headers)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "without its closing boundary '--cut--'" in error["message"] and error["param"] == "file"
    assert client.get("/v1/files").json()["data"] == []
    r = client.post("/v1/files", content=whole, headers=headers)
    assert r.status_code == 200 and r.json()["bytes"] == len(REQUESTS), r.text


def test_part_headers_in_any_bytes_are_read_and_names_as_utf8(client: TestClient) -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="\xd47\xff\xc2"\r\n\r\nignored\r\n'
        + '--b\r\nContent-Disposition: form-data; name="file"; filename="données ✓.jsonl"\r\n'.encode()
        + "Content-Type: application/jsonl; x=ި\r\n\r\n".encode()
        + REQUESTS
        + b'\r\n--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--b--\r\n'
    )
    r = client.post("/v1/files", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 200, r.text
    assert (r.json()["filename"], r.json()["bytes"]) == ("données ✓.jsonl", len(REQUESTS))


def test_an_upload_over_the_limit_is_a_413_and_keeps_nothing(client: TestClient, settings_env: SettingsEnv) -> None:
    settings_env.set(EMBEDQ_BATCH_MAX_UPLOAD_BYTES="4096")
    with TestClient(create_app()) as small:
        r = upload(small, content=b"x" * 10_000)
        assert r.status_code == 413, r.text
        assert "EMBEDQ_BATCH_MAX_UPLOAD_BYTES" in r.json()["error"]["message"]
        assert small.get("/v1/files").json()["data"] == []


def test_a_batch_is_created_validating_as_a_job_of_kind_batch(client: TestClient, redis_client) -> None:
    file_id = upload(client).json()["id"]
    r = create(client, file_id, metadata={"project": "x"})
    assert r.status_code == 200, r.text
    batch = r.json()
    assert batch["id"].startswith("batch_") and batch["object"] == "batch"
    assert (batch["status"], batch["endpoint"], batch["input_file_id"], batch["completion_window"]) == (
        "validating",
        ENDPOINT,
        file_id,
        "24h",
    )
    assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert batch["metadata"] == {"project": "x"} and batch["errors"] is None
    assert batch["expires_at"] - batch["created_at"] == 24 * 3600
    for stamp in ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelled_at"):
        assert batch[stamp] is None
    job = client.get(f"/jobs/{batch['job_id']}").json()
    assert (job["kind"], job["status"]) == ("batch", "queued")
    assert [j["id"] for j in client.get("/jobs", params={"kind": "batch"}).json()["data"]] == [batch["job_id"]]
    messages = [json.loads(m) for m in redis_client.lrange("bulk", 0, -1)]
    assert [m["headers"]["task"] for m in messages] == ["batch.validate"]
    assert client.get(f"/v1/batches/{batch['id']}").json() == batch


@pytest.mark.parametrize(
    ("overrides", "param", "needle"),
    [
        ({"endpoint": "/v1/chat/completions"}, "endpoint", "/v1/embeddings only"),
        ({"completion_window": "48h"}, "completion_window", "use '24h'"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "at most 16"),
    ],
)
def test_batch_refusals_are_400s_naming_the_fix(
    client: TestClient, overrides: dict[str, object], param: str, needle: str
) -> None:
    file_id = upload(client).json()["id"]
    r = create(client, file_id, **overrides)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error") and needle in error["message"]


def test_a_missing_field_is_a_400_in_openais_shape(client: TestClient) -> None:
    r = client.post("/v1/batches", json={"endpoint": ENDPOINT, "completion_window": "24h"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input_file_id"


def test_unknown_ids_are_404s(client: TestClient) -> None:
    for method, path in [
        ("GET", "/v1/files/file-nope"),
        ("GET", "/v1/files/file-nope/content"),
        ("DELETE", "/v1/files/file-nope"),
        ("GET", "/v1/batches/batch_nope"),
        ("POST", "/v1/batches/batch_nope/cancel"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "not_found"
    r = create(client, "file-nope")
    assert r.status_code == 404 and r.json()["error"]["param"] == "input_file_id"


def test_batches_list_newest_first_in_pages(client: TestClient) -> None:
    file_id = upload(client).json()["id"]
    ids = [create(client, file_id).json()["id"] for _ in range(3)]
    first = client.get("/v1/batches", params={"limit": 2}).json()
    assert [b["id"] for b in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    rest = client.get("/v1/batches", params={"after": first["last_id"]}).json()
    assert [b["id"] for b in rest["data"]] == ids[:1] and rest["has_more"] is False


def test_cancelling_a_validating_batch_cancels_its_job_and_sends_finalize(client: TestClient, redis_client) -> None:
    batch = create(client, upload(client).json()["id"]).json()
    r = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelling" and r.json()["cancelling_at"] is not None
    assert client.get(f"/jobs/{batch['job_id']}").json()["status"] == "cancelled"
    tasks = [json.loads(m)["headers"]["task"] for m in redis_client.lrange("bulk", 0, -1)]
    assert sorted(tasks) == ["batch.finalize", "batch.validate"]
    again = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelling"


def test_cancelling_through_jobs_cancels_the_batch_too(client: TestClient) -> None:
    batch = create(client, upload(client).json()["id"]).json()
    assert client.post(f"/jobs/{batch['job_id']}/cancel").status_code == 200
    assert client.get(f"/v1/batches/{batch['id']}").json()["status"] == "cancelling"


def make_key(tenant: str) -> str:
    from app.keys.service import create_key

    with session_scope() as session:
        _, raw = create_key(session, tenant=tenant)
    return raw


def test_another_tenants_files_and_batches_are_404s(clean_state, settings_env: SettingsEnv) -> None:
    settings_env.set(EMBEDQ_AUTH_DISABLED="false")
    settings_env.unset("EMBEDQ_API_KEYS")
    acme = {"Authorization": f"Bearer {make_key('acme')}"}
    globex = {"Authorization": f"Bearer {make_key('globex')}"}
    with TestClient(create_app()) as client:
        file_id = upload(client, headers=acme).json()["id"]
        batch_id = client.post(
            "/v1/batches",
            json={"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"},
            headers=acme,
        ).json()["id"]
        assert client.get(f"/v1/files/{file_id}", headers=acme).status_code == 200
        for method, path in [
            ("GET", f"/v1/files/{file_id}"),
            ("GET", f"/v1/files/{file_id}/content"),
            ("DELETE", f"/v1/files/{file_id}"),
            ("GET", f"/v1/batches/{batch_id}"),
            ("POST", f"/v1/batches/{batch_id}/cancel"),
        ]:
            assert client.request(method, path, headers=globex).status_code == 404, (method, path)
        assert client.get("/v1/files", headers=globex).json()["data"] == []
        assert client.get("/v1/batches", headers=globex).json()["data"] == []
        refused = client.post(
            "/v1/batches",
            json={"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h"},
            headers=globex,
        )
        assert refused.status_code == 404
        assert client.get("/v1/files").status_code == 401


def test_files_live_in_an_s3_artifact_store_too(clean_state, settings_env: SettingsEnv, request) -> None:
    server = request.getfixturevalue("s3_server")
    settings_env.set(**server.env("batch-files-test"))
    with TestClient(create_app()) as client:
        file = upload(client).json()
        assert client.get(f"/v1/files/{file['id']}/content").content == REQUESTS
        from app.artifacts.store import ArtifactStore
        from app.core.config import get_settings

        store = ArtifactStore.from_settings(get_settings())
        assert store.url.startswith("s3://") and store.exists(f"files/default/{file['id']}")
        assert client.delete(f"/v1/files/{file['id']}").status_code == 200
        assert not store.exists(f"files/default/{file['id']}")


def test_a_file_expires_after_what_the_upload_asked_and_is_then_gone(client: TestClient) -> None:
    # The openai client sends expires_after={"anchor": "created_at", "seconds": N} as these two form fields.
    policy = {"expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"}
    file = client.post(
        "/v1/files", files={"file": ("in.jsonl", REQUESTS, "application/jsonl")}, data={"purpose": "batch", **policy}
    ).json()
    assert file["expires_at"] - file["created_at"] in (3599, 3600, 3601), file
    for bad in ({**policy, "expires_after[seconds]": "10"}, {**policy, "expires_after[anchor]": "last_used"}):
        refused = client.post("/v1/files", files={"file": ("x.jsonl", REQUESTS)}, data={"purpose": "batch", **bad})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "expires_after", refused.text
    kept = upload(client).json()
    assert kept["expires_at"] is None

    # An hour on: the file is gone to the API at once, and the maintenance sweep deletes its row and bytes.
    with session_scope() as session:
        session.execute(
            text("UPDATE batch_files SET expires_at = now() - interval '1 second' WHERE id = :id"), {"id": file["id"]}
        )
    assert client.get(f"/v1/files/{file['id']}").status_code == 404
    assert client.get(f"/v1/files/{file['id']}/content").status_code == 404
    assert file["id"] not in {f["id"] for f in client.get("/v1/files").json()["data"]}
    assert create(client, file["id"]).status_code == 404
    store = ArtifactStore.from_settings(get_settings())
    assert store.exists(storage_key("default", file["id"]))
    assert delete_expired(session_scope, store, 100) == 1
    assert not store.exists(storage_key("default", file["id"]))
    assert client.get(f"/v1/files/{kept['id']}").status_code == 200  # one without expiry stays


def test_a_batch_s_output_expiry_is_kept_for_its_files(client: TestClient) -> None:
    file_id = upload(client).json()["id"]
    policy = {"anchor": "created_at", "seconds": 7200}
    batch = create(client, file_id, output_expires_after=policy)
    assert batch.status_code == 200, batch.text
    with session_scope() as session:
        kept = session.scalar(
            text("SELECT output_expires_after_s FROM batches WHERE id = :id"), {"id": batch.json()["id"]}
        )
    assert kept == 7200
    for bad in ({"anchor": "created_at", "seconds": 60}, {"anchor": "now", "seconds": 7200}):
        refused = create(client, file_id, output_expires_after=bad)
        assert refused.status_code == 400 and "output_expires_after" in refused.json()["error"]["param"], refused.text
