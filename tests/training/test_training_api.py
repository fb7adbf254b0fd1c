"""The fine-tuning HTTP API in-process, on real Postgres and Redis (no worker: tasks wait in the queue)."""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.core.db import session_scope
from app.main import create_app
from app.models.job import Job
from app.models.registered_model import RegisteredModel

TSV = "\n".join(f"what is thing {i}\tthing {i} is a thing numbered {i}" for i in range(48))


@pytest.fixture
def client(clean_state) -> TestClient:
    return TestClient(create_app())


def queued_tasks(redis_client, queue: str = "training") -> list[dict]:
    return [json.loads(m) for m in redis_client.lrange(queue, 0, -1)]


def test_fine_tune_answers_the_compatible_shape_and_queues_train_full(client: TestClient, redis_client) -> None:
    text = TSV + "\nthis line has no tab\n\nx\ty\tz\tw\n"
    r = client.post("/fine-tune", json={"text_content": text, "model_name": "my-model", "epochs": 2, "batch_size": 8})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"job_id", "status"} and body["status"] == "pending"
    assert r.headers["location"] == f"/train-status/{body['job_id']}"
    tasks = queued_tasks(redis_client)
    assert [t["headers"]["task"] for t in tasks] == ["train.full"]
    assert tasks[0]["headers"]["argsrepr"] == f"['{body['job_id']}']"

    status = client.get(f"/train-status/{body['job_id']}").json()
    assert {"status", "progress", "message", "error", "steps", "epoch"} <= set(status)
    assert {"loss", "total_steps", "eval", "model"} <= set(status)
    assert status["status"] == "pending" and status["steps"] == 0 and status["model"] is None
    # 48 pairs: 24 held out (at least 32 wanted, at most half), 24 trained in batches of 8, twice.
    assert status["data"] == {
        "pairs": 48,
        "with_negatives": 0,
        "train_pairs": 24,
        "eval_pairs": 24,
        "skipped_lines": 2,
        "skipped_examples": status["data"]["skipped_examples"],
    }
    assert [e["line"] for e in status["data"]["skipped_examples"]] == [49, 51]
    assert status["total_steps"] == 6
    assert "2 malformed line(s) skipped" in status["message"]

    job = client.get(f"/jobs/{body['job_id']}").json()
    assert job["kind"] == "fine_tune" and job["status"] == "queued"
    assert job["model"] == "sentence-transformers/all-MiniLM-L6-v2"


def test_lora_upload_of_jsonl_with_hard_negatives(client: TestClient, redis_client) -> None:
    lines = [json.dumps({"query": f"q {i}", "positive": f"p {i}", "negative": f"n {i}"}) for i in range(30)]
    lines += ["{broken json", json.dumps({"query": "only a query"})]
    r = client.post(
        "/fine-tune-lora",
        data={"model_name": "lora-model", "r": "8", "target_modules": "query,value", "batch_size": "4"},
        files={"file": ("pairs.jsonl", "\n".join(lines).encode(), "application/jsonl")},
    )
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    assert [t["headers"]["task"] for t in queued_tasks(redis_client)] == ["train.lora"]
    status = client.get(f"/train-status/{job_id}").json()
    assert status["data"]["pairs"] == 30 and status["data"]["with_negatives"] == 30
    assert status["data"]["skipped_lines"] == 2
    with session_scope() as session:
        job = session.get(Job, uuid.UUID(job_id))
        assert job is not None and job.kind == "fine_tune_lora"
        assert job.params["r"] == 8 and job.params["target_modules"] == ["query", "value"]
        # No epochs or learning_rate sent: both chosen from the data (30 pairs: LoRA's small-data rate).
        assert job.params["learning_rate"] == 5e-4 and job.params["lora_alpha"] == 32
        assert job.params["chosen_defaults"] == ["epochs", "learning_rate"] and job.params["epochs"] >= 1


def test_qlora_on_a_cpu_host_is_a_400_and_queues_nothing(client: TestClient, redis_client) -> None:
    r = client.post("/fine-tune-lora", json={"text_content": TSV, "model_name": "q-model", "use_qlora": True})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "qlora_unavailable" and "CUDA" in r.json()["detail"]
    assert "use_qlora=false" in r.json()["detail"]
    assert queued_tasks(redis_client) == []
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


@pytest.mark.parametrize("alias", ["../escape", "a/b", ".hidden", "a..b", "", "x" * 101, "sp ace"])
def test_alias_names_are_validated(client: TestClient, alias: str) -> None:
    r = client.post("/fine-tune", json={"text_content": TSV, "model_name": alias})
    assert r.status_code == 422, r.text


def test_existing_alias_is_409_unless_overwrite(client: TestClient) -> None:
    with session_scope() as session:
        session.add(RegisteredModel(name="taken", base="b", kind="full", path="/x", dimension=384))
    body = {"text_content": TSV, "model_name": "taken"}
    r = client.post("/fine-tune", json=body)
    assert r.status_code == 409 and "overwrite" in r.json()["detail"]
    assert client.post("/fine-tune", json={**body, "overwrite": True}).status_code == 200
    # A second job for an alias that a queued job will produce is refused too.
    again = client.post("/fine-tune", json={**body, "overwrite": True})
    assert again.status_code == 409 and "already producing" in again.json()["detail"]


def test_an_alias_naming_a_model_not_made_by_fine_tuning_is_409(client: TestClient) -> None:
    r = client.post("/fine-tune", json={"text_content": TSV, "model_name": "all-MiniLM-L6-v2", "overwrite": True})
    assert r.status_code == 409 and "did not create" in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model_name": "m"}, 422, "no training pairs"),
        ({"text_content": "just\tone\n", "model_name": "m"}, 422, "at least"),
        ({"text_content": "no tabs at all\n" * 20, "model_name": "m"}, 422, "20 lines skipped"),
        ({"text_content": TSV, "model_name": "m", "base_model": "no-such-model"}, 422, "unknown model"),
        ({"text_content": TSV, "model_name": "m", "epochs": 0}, 422, "greater than or equal"),
        ({"text_content": TSV, "model_name": "m", "surprise": 1}, 422, "Extra inputs"),
        ({"text_content": TSV, "model_name": "m", "hard_negatives": {"from": "the web"}}, 422, "collection:<name>"),
        ({"text_content": TSV, "model_name": "m", "hard_negatives": {"per_pair": 6}}, 422, "less than or equal"),
        ({"text_content": TSV, "model_name": "m", "hard_negatives": {"from": "collection:nope"}}, 404, "nope"),
        ({"text_content": TSV, "model_name": "m", "mini_batch_size": 32}, 422, "must not exceed batch_size"),
        ({"text_content": TSV, "model_name": "m", "eval_every_steps": 0}, 422, "greater than or equal"),
    ],
)
def test_bad_requests_say_what_to_fix(client: TestClient, body: dict, status: int, needle: str) -> None:
    r = client.post("/fine-tune", json=body)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_upload_and_text_content_together_is_refused(client: TestClient) -> None:
    r = client.post(
        "/fine-tune",
        data={"model_name": "m", "text_content": TSV},
        files={"file": ("pairs.tsv", TSV.encode(), "text/tab-separated-values")},
    )
    assert r.status_code == 422 and "not both" in r.json()["detail"]


def test_a_form_cut_off_before_its_closing_boundary_is_a_400_and_queues_nothing(
    client: TestClient, redis_client
) -> None:
    def part(name: str, value: str, filename: str = "") -> bytes:
        file = f'; filename="{filename}"' if filename else ""
        return f'--cb\r\nContent-Disposition: form-data; name="{name}"{file}\r\n\r\n{value}\r\n'.encode()

    whole = part("model_name", "m") + part("file", TSV, "pairs.tsv") + part("epochs", "7") + b"--cb--\r\n"
    headers = {"content-type": "multipart/form-data; boundary=cb"}
    # Cut inside the epochs field: the pairs are whole, and without the check the job trains with default epochs.
    cut = whole[: whole.index(b"\r\n\r\n7") + 4]
    r = client.post("/fine-tune", content=cut, headers=headers)
    assert r.status_code == 400, r.text
    assert "ended inside part 3, without its closing boundary '--cb--'" in r.json()["detail"]
    assert queued_tasks(redis_client) == []
    r = client.post("/fine-tune", content=whole, headers=headers)
    assert r.status_code == 200, r.text
    with session_scope() as session:
        job = session.get(Job, uuid.UUID(r.json()["job_id"]))
        assert job is not None and job.params["epochs"] == 7


def test_train_status_of_unknown_or_non_training_jobs_is_404(client: TestClient) -> None:
    assert client.get(f"/train-status/{uuid.uuid4()}").status_code == 404
    job = client.post("/jobs/embeddings", json={"input": ["a"]}).json()
    assert client.get(f"/train-status/{job['id']}").status_code == 404


def test_openapi_documents_json_and_multipart_bodies(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/fine-tune-lora"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    assert "use_qlora" in content["application/json"]["schema"]["properties"]
    assert "file" in content["multipart/form-data"]["schema"]["properties"]
