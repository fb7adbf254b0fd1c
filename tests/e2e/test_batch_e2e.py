"""End to end: the official `openai` client runs a batch against a real API process and the session's worker.

Upload a JSONL file, create a batch, poll it, download its output and error files; vectors equal those of
POST /v1/embeddings (the sync path, on the same worker), bad requests fail on their own lines, a cancel keeps
what completed, unknown ids are the client's NotFoundError, and another tenant's file or batch is a 404.
Real MiniLM throughout.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator

import numpy as np
import openai
import pytest
from click.testing import CliRunner
from support.processes import ManagedProcess, start_api
from support.texts import SENTENCES, mixed_texts
from support.waiting import wait_until

from app.cli.main import main as embedq
from app.core.config import DEFAULT_MODEL
from app.core.db import session_scope

pytestmark = pytest.mark.e2e

CLOSE = {"rtol": 0, "atol": 2e-6}
ENDPOINT = "/v1/embeddings"


def request(custom_id: str, **body: object) -> dict[str, object]:
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}


def jsonl(lines: list[dict[str, object]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def wait_batch(client: openai.OpenAI, batch_id: str, statuses: set[str], timeout: float = 300):
    return wait_until(
        lambda: client.batches.retrieve(batch_id),
        timeout,
        lambda b: f"batch {batch_id} did not reach {sorted(statuses)} in {timeout}s: {b}",
        until=lambda b: b.status in statuses,
        interval=0.3,
    )


def lines_of(client: openai.OpenAI, file_id: str | None) -> dict[str, dict]:
    if file_id is None:
        return {}
    content = client.files.content(file_id).read()
    parsed = [json.loads(line) for line in content.splitlines()]
    return {line["custom_id"]: line for line in parsed}


@pytest.fixture
def client(api: ManagedProcess, worker: ManagedProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.base_url}/v1", api_key="unused", timeout=120, max_retries=0)


def test_the_openai_client_runs_a_batch_whose_vectors_equal_the_sync_paths(client: openai.OpenAI) -> None:
    texts = [t for t in mixed_texts(40, seed=3) if t][:30]
    lines = [request(f"req-{i}", input=texts[i : i + 3], model=DEFAULT_MODEL) for i in range(0, 30, 3)]
    lines += [
        request("single-base64", input=texts[0], encoding_format="base64"),
        request("empty", input=""),
        request("unknown-model", input="x", model="no-such-model"),
        request("too-short-dims", input="x", dimensions=0),
    ]
    uploaded = client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")
    assert (uploaded.object, uploaded.purpose, uploaded.bytes) == ("file", "batch", len(jsonl(lines)))
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h", metadata={"run": "e2e"}
    )
    assert created.status == "validating" and created.metadata == {"run": "e2e"}
    batch = wait_batch(client, created.id, {"completed", "failed", "expired", "cancelled"})
    assert batch.status == "completed", batch
    assert batch.request_counts.model_dump() == {"total": 14, "completed": 11, "failed": 3}
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at and batch.expires_at

    output = lines_of(client, batch.output_file_id)
    sync = client.embeddings.create(model=DEFAULT_MODEL, input=texts, encoding_format="float")
    expected = np.asarray([d.embedding for d in sync.data], dtype=np.float32)
    got = []
    for i in range(0, 30, 3):
        body = output[f"req-{i}"]["response"]["body"]
        assert output[f"req-{i}"]["response"]["status_code"] == 200 and output[f"req-{i}"]["error"] is None
        assert body["model"] == DEFAULT_MODEL and [d["index"] for d in body["data"]] == [0, 1, 2]
        got += [d["embedding"] for d in body["data"]]
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), expected, **CLOSE)
    single = output["single-base64"]["response"]["body"]["data"][0]["embedding"]
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(single), "<f4"), expected[0], **CLOSE)

    errors = lines_of(client, batch.error_file_id)
    assert set(errors) == {"empty", "unknown-model", "too-short-dims"}
    assert errors["empty"]["response"]["status_code"] == 400
    assert errors["unknown-model"]["response"]["status_code"] == 404
    assert errors["too-short-dims"]["response"]["body"]["error"]["param"] == "dimensions"
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"


def test_a_cancel_mid_way_keeps_the_completed_part(client: openai.OpenAI) -> None:
    # Long requests, about 2,000 estimated tokens each: four to a task, so the batch has many tasks.
    long_text = " ".join(SENTENCES) * 2
    lines = [request(f"c{i}", input=[f"{i} {long_text}"] * 8) for i in range(120)]
    file_id = client.files.create(file=("long.jsonl", jsonl(lines)), purpose="batch").id
    batch_id = client.batches.create(input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h").id
    wait_until(
        lambda: client.batches.retrieve(batch_id).request_counts.completed,
        300,
        "no request completed",
        interval=0.2,
    )
    cancelling = client.batches.cancel(batch_id)
    assert cancelling.status in {"cancelling", "cancelled"}
    batch = wait_batch(client, batch_id, {"cancelled"})
    done = batch.request_counts.completed
    assert 0 < done < 120, batch
    output = lines_of(client, batch.output_file_id)
    not_run = lines_of(client, batch.error_file_id)
    assert len(output) == done and len(output) + len(not_run) == 120
    assert {line["error"]["code"] for line in not_run.values()} == {"batch_cancelled"}
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch_id)


def test_unknown_ids_are_the_clients_not_found_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-nope")
    with pytest.raises(openai.NotFoundError):
        client.files.content("file-nope")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint=ENDPOINT, completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="/v1/embeddings only"):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")


def test_the_cli_submits_waits_and_writes_the_output_next_to_the_input(
    api: ManagedProcess, worker: ManagedProcess, tmp_path
) -> None:
    source = tmp_path / "requests.jsonl"
    source.write_bytes(jsonl([request("a", input="hello"), request("b", input=["x", "y"]), request("bad", input="")]))
    args = ["batch", "submit", str(source), "--wait", "--poll", "0.3", "--api", api.base_url]
    result = CliRunner().invoke(embedq, args)
    assert result.exit_code == 0, result.output
    assert "3/3 requests (1 failed) | completed" in result.output
    output = [json.loads(line) for line in (tmp_path / "requests.output.jsonl").read_text().splitlines()]
    errors = [json.loads(line) for line in (tmp_path / "requests.errors.jsonl").read_text().splitlines()]
    assert [line["custom_id"] for line in output] == ["a", "b"] and [e["custom_id"] for e in errors] == ["bad"]
    assert len(output[1]["response"]["body"]["data"]) == 2


@pytest.fixture(scope="module")
def auth_api(service_env: dict[str, str]) -> Iterator[ManagedProcess]:
    process = start_api({**service_env, "EMBEDQ_AUTH_DISABLED": "false"})
    yield process
    process.stop()


def tenant_client(api: ManagedProcess, tenant: str) -> openai.OpenAI:
    from app.keys.service import create_key

    with session_scope() as session:
        _, raw = create_key(session, tenant=tenant)
    return openai.OpenAI(base_url=f"{api.base_url}/v1", api_key=raw, timeout=60, max_retries=0)


def test_another_tenants_file_and_batch_are_404s(auth_api: ManagedProcess) -> None:
    suffix = uuid.uuid4().hex[:8]
    acme, globex = tenant_client(auth_api, f"acme-{suffix}"), tenant_client(auth_api, f"globex-{suffix}")
    file_id = acme.files.create(file=("a.jsonl", jsonl([request("a", input="hi")])), purpose="batch").id
    batch_id = acme.batches.create(input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h").id
    assert acme.batches.retrieve(batch_id).id == batch_id
    for call in (
        lambda: globex.files.retrieve(file_id),
        lambda: globex.files.content(file_id),
        lambda: globex.files.delete(file_id),
        lambda: globex.batches.retrieve(batch_id),
        lambda: globex.batches.cancel(batch_id),
        lambda: globex.batches.create(input_file_id=file_id, endpoint=ENDPOINT, completion_window="24h"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert [b.id for b in globex.batches.list()] == []
    assert file_id not in [f.id for f in globex.files.list()]
    assert acme.batches.cancel(batch_id).status in {"cancelling", "cancelled"}
