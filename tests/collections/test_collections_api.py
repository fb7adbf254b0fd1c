"""The collections HTTP API in-process (TestClient) on the session's Postgres and Redis; no worker runs here."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from support.settings import SettingsEnv
from support.tiny_models import in_models_dir

from app.main import create_app
from app.observability.metrics import queue_depths

MODEL = "tiny-api"


@pytest.fixture(scope="module", autouse=True)
def tiny_model(session_services) -> None:
    in_models_dir(MODEL)


@pytest.fixture
def client(clean_state, settings_env: SettingsEnv) -> Iterator[TestClient]:
    settings_env.set(EMBEDQ_INGEST_BATCH_DOCUMENTS="3")
    with TestClient(create_app()) as test_client:
        yield test_client


def create(client: TestClient, name: str = "docs", **extra) -> dict:
    response = client.post("/collections", json={"name": name, "model": MODEL, **extra})
    assert response.status_code == 201, response.text
    return response.json()


def streamed(body: bytes, piece: int = 11) -> Iterator[bytes]:
    for start in range(0, len(body), piece):
        yield body[start : start + piece]


def test_collections_are_created_listed_read_and_deleted(client: TestClient) -> None:
    made = create(client, chunking={"max_tokens": 32, "overlap_tokens": 4}, metadata={"team": "search"})
    assert (made["model"], made["dimension"], made["chunking"]) == (MODEL, 32, {"max_tokens": 32, "overlap_tokens": 4})
    assert made["links"]["search"] == "/collections/docs/search" and made["versions"][0]["status"] == "active"
    assert client.post("/collections", json={"name": "docs", "model": MODEL}).status_code == 409
    assert client.post("/collections", json={"name": "bad name!"}).status_code == 422
    unknown = client.post("/collections", json={"name": "x", "model": "no-such-model"})
    assert unknown.status_code == 422 and "no-such-model" in unknown.json()["detail"]
    bad_overlap = client.post("/collections", json={"name": "y", "chunking": {"max_tokens": 10, "overlap_tokens": 6}})
    assert bad_overlap.status_code == 422

    create(client, "other")
    listed = client.get("/collections").json()
    assert [c["name"] for c in listed["data"]] == ["docs", "other"] and listed["next_offset"] is None
    one = client.get("/collections/docs").json()
    assert one["counts"] == {"documents": 0, "pending": 0, "ready": 0, "failed": 0, "chunks": 0, "vectors": 0}
    assert one["metadata"] == {"team": "search"}

    assert client.delete("/collections/docs").status_code == 204
    assert client.get("/collections/docs").status_code == 404
    assert client.delete("/collections/docs").status_code == 404


def test_storage_is_float32_by_default_float16_on_request_and_anything_else_is_a_422(client: TestClient) -> None:
    assert create(client)["storage"] == "float32"
    half = create(client, "half", storage="float16")
    assert half["storage"] == "float16" and half["versions"][0]["storage"] == "float16"
    assert client.get("/collections/half").json()["storage"] == "float16"
    bad = client.post("/collections", json={"name": "bad", "model": MODEL, "storage": "int8"})
    assert bad.status_code == 422 and "'float32' or 'float16'" in bad.text, bad.text
    assert client.get("/collections/bad").status_code == 404


def test_a_streamed_jsonl_upload_returns_an_ingest_job_and_queues_batches(client: TestClient, redis_client) -> None:
    create(client)
    rows = [{"id": f"d{i}", "text": f"document number {i}", "metadata": {"i": i}} for i in range(7)]
    body = b"".join(json.dumps(r).encode() + b"\n" for r in rows) + b"this is not json\n"
    response = client.post(
        "/collections/docs/documents", content=streamed(body), headers={"Content-Type": "application/x-ndjson"}
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["kind"], job["status"], job["model"]) == ("ingest", "running", MODEL)
    assert job["counts"] == {"total": 8, "done": 0, "failed": 1}
    assert job["ingest"]["input_complete"] is True and job["links"]["errors"] == f"/jobs/{job['id']}/errors"
    [error] = job["ingest"]["errors"]
    assert error["line"] == 8 and "not valid JSON" in error["error"]
    # Seven documents in batches of three, each sent to the bulk queue (at its tenant's priority) once committed.
    assert queue_depths(redis_client)["bulk"] == 3
    assert client.get(f"/jobs/{job['id']}").json()["ingest"]["chunks"] == {"total": 0, "done": 0, "failed": 0}
    errors = client.get(f"/jobs/{job['id']}/errors").json()
    assert [e["line"] for e in errors["data"]] == [8] and errors["next_after"] is None
    assert client.get("/jobs", params={"kind": "ingest"}).json()["data"][0]["id"] == job["id"]
    counts = client.get("/collections/docs").json()["counts"]
    assert (counts["documents"], counts["pending"]) == (7, 7)


def test_multipart_csv_and_text_files_and_text_lines(client: TestClient) -> None:
    create(client)
    files = [
        ("file", ("a.csv", b"id,text,lang\nc1,first,en\nc2,second,fr\n", "text/csv")),
        ("file", ("notes.txt", "a whole file as one document ✓".encode(), "text/plain")),
    ]
    job = client.post("/collections/docs/documents", files=files).json()
    assert job["counts"] == {"total": 3, "done": 0, "failed": 0}
    lines = client.post(
        "/collections/docs/documents",
        params={"text_mode": "line", "document_id": "lines.txt"},
        content=b"line one\n\nline two\n",
        headers={"Content-Type": "text/plain"},
    ).json()
    assert lines["counts"] == {"total": 2, "done": 0, "failed": 0}
    assert client.get("/collections/docs").json()["counts"]["documents"] == 5
    unnamed = client.post(
        "/collections/docs/documents",
        params={"text_mode": "line"},
        content=b"would be line:1\n",
        headers={"Content-Type": "text/plain"},
    )
    assert unnamed.status_code == 422 and "document_id" in unnamed.json()["detail"]


def test_uploads_that_cannot_be_read_are_refused_before_a_job_exists(client: TestClient) -> None:
    create(client)
    post = client.post
    missing = post("/collections/nope/documents", content=b"{}", headers={"Content-Type": "application/x-ndjson"})
    assert missing.status_code == 404
    unknown = post("/collections/docs/documents", content=b"x", headers={"Content-Type": "application/octet-stream"})
    assert unknown.status_code == 422 and "?format=" in unknown.json()["detail"]
    empty = post("/collections/docs/documents", content=b"\n\n", headers={"Content-Type": "application/x-ndjson"})
    assert empty.status_code == 422 and "no documents" in empty.json()["detail"]
    header = post("/collections/docs/documents", content=b"id,body\n1,x\n", params={"format": "csv"})
    assert header.status_code == 422 and "no text column" in header.json()["detail"]
    assert client.get("/jobs", params={"kind": "ingest"}).json()["data"] == []


def test_a_json_array_broken_midway_keeps_what_arrived_and_says_why(client: TestClient) -> None:
    create(client)
    good = ",".join(json.dumps({"id": f"d{i}", "text": f"text {i}"}) for i in range(4))
    body = f'[{good}, {{"id": "bad", '.encode() + b" " * 10 + b"}]"
    job = client.post(
        "/collections/docs/documents", content=streamed(body, 40), headers={"Content-Type": "application/json"}
    ).json()
    assert job["counts"]["total"] == 4 and job["ingest"]["input_complete"] is True
    assert any("malformed at item 5" in e["error"] for e in job["ingest"]["errors"])


def test_a_multipart_upload_cut_off_keeps_the_documents_that_ended_and_says_why(client: TestClient) -> None:
    create(client)
    lines = b"".join(json.dumps({"id": f"d{i}", "text": f"text {i}"}).encode() + b"\n" for i in range(3))
    head = b'--cut\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
    # The last line has no newline: only the end of its part ends it, and the cut body has none.
    body = head + lines + b'{"id": "last", "text": "cut off"}'
    headers = {"Content-Type": "multipart/form-data; boundary=cut"}
    job = client.post("/collections/docs/documents", content=streamed(body, 40), headers=headers).json()
    assert job["counts"]["total"] == 3 and job["ingest"]["input_complete"] is True
    assert any("without its closing boundary '--cut--'" in e["error"] for e in job["ingest"]["errors"])
    whole = client.post("/collections/docs/documents", content=body + b"\r\n--cut--\r\n", headers=headers).json()
    assert whole["counts"]["total"] == 4 and whole["ingest"]["errors"] == []
    assert client.get("/collections/docs").json()["counts"]["documents"] == 4  # d0-d2, then "last"


def test_search_refuses_a_vector_of_another_dimension_and_exports_stream(client: TestClient) -> None:
    create(client)
    wrong = client.post("/collections/docs/search", json={"vector": [0.5] * 8})
    assert wrong.status_code == 422
    assert wrong.json()["detail"] == (
        "the query vector has 8 dimensions but collection 'docs' holds 32-dimensional vectors of tiny-api: "
        "embed the query with tiny-api"
    )
    assert client.post("/collections/docs/search", json={"top_k": 3}).status_code == 422
    blank = client.post("/collections/docs/search", json={"query": "   \n"})
    assert blank.status_code == 422 and "only whitespace" in blank.text, blank.text
    assert client.post("/collections/docs/search", json={"vector": [0.5] * 32}).json()["data"] == []

    exported = client.get("/collections/docs/export")
    assert exported.status_code == 200 and exported.content == b""
    parquet = client.get("/collections/docs/export", params={"format": "parquet"})
    assert parquet.status_code == 200 and pq.read_table(io.BytesIO(parquet.content)).num_rows == 0
    assert client.get("/collections/docs/export", params={"format": "csv"}).status_code == 422
    assert client.get("/collections/nope/export").status_code == 404


def test_reembed_is_a_job_and_excludes_other_jobs_on_the_collection(client: TestClient) -> None:
    create(client)
    client.post("/collections/docs/documents", content=b'{"id": "a", "text": "x"}\n', params={"format": "jsonl"})
    busy = client.post("/collections/docs/reembed", json={"model": MODEL})
    assert busy.status_code == 409 and "running ingest job" in busy.json()["detail"]
    ingest = client.get("/jobs", params={"kind": "ingest"}).json()["data"][0]
    client.post(f"/jobs/{ingest['id']}/cancel")
    job = client.post("/collections/docs/reembed", json={"model": MODEL})
    assert job.status_code == 202 and job.json()["kind"] == "reembed"
    assert client.post("/collections/docs/reembed", json={"model": MODEL}).status_code == 409
    upload = client.post(
        "/collections/docs/documents", content=b'{"id": "b", "text": "y"}\n', params={"format": "jsonl"}
    )
    assert upload.status_code == 409 and "being re-embedded" in upload.json()["detail"]
    versions = client.get("/collections/docs").json()["versions"]
    assert [(v["number"], v["status"]) for v in versions] == [(1, "active"), (2, "building")]


def test_upload_notification_parameters_are_validated_and_kept(client: TestClient) -> None:
    create(client)
    body = b'{"id": "a", "text": "some text"}\n'
    headers = {"Content-Type": "application/x-ndjson"}
    late = client.post("/collections/docs/documents?progress_milestones=150", content=body, headers=headers)
    assert late.status_code == 422 and late.json()["detail"][0]["loc"][:2] == ["query", "progress_milestones"]
    private = client.post("/collections/docs/documents?webhook_url=http://10.0.0.1/hook", content=body, headers=headers)
    assert private.status_code == 422 and "10.0.0.1" in private.text
    assert client.get("/collections/docs").json()["counts"]["documents"] == 0  # refused before reading anything
    kept = client.post(
        "/collections/docs/documents?webhook_url=http://127.0.0.1:9/h&progress_milestones=50&progress_milestones=25",
        content=body,
        headers=headers,
    )
    assert kept.status_code == 202 and kept.json()["webhook_url"] == "http://127.0.0.1:9/h"
