"""A batch's worker side in-process: validate, run its tasks, finalize; on real Postgres and a tiny real model.

The tasks' own functions run here (``app.batches.execution`` with the worker's ``embed_requests``), in the
test's rolled-back session; the artifact store is a folder of the test's own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from support.principals import ADMIN
from support.tiny_models import in_models_dir

from app.artifacts.store import ArtifactStore
from app.batches import execution, files, service
from app.batches.contracts import EmbedCall
from app.batches.execution import ChunkOutcome
from app.batches.files import Received
from app.batches.schemas import BatchCreate
from app.core.config import Settings, get_settings
from app.jobs.repository import JobRepository
from app.models.batch import Batch
from app.models.webhook import WebhookEndpoint, WebhookEvent
from app.webhooks.signing import new_secret
from workers.batch_embedding import embed_requests

MODEL = "tiny-batch"


@pytest.fixture(scope="module", autouse=True)
def tiny_model(session_services) -> None:
    in_models_dir(MODEL)


@pytest.fixture(autouse=True)
def default_endpoint(db_session: Session) -> WebhookEndpoint:
    """A default endpoint of the tenant: it is owed the events of every job, batches' included."""
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(), tenant=ADMIN.tenant, url="http://127.0.0.1:9/hook", secret=new_secret(), all_jobs=True
    )
    db_session.add(endpoint)
    db_session.flush()
    return endpoint


def batch_events(session: Session, batch: Batch) -> list[tuple[str, str]]:
    """Return (type, data.id) of the batch events owed for the batch's job."""
    events = session.scalars(select(WebhookEvent).where(WebhookEvent.job_id == batch.job_id))
    return [(e.type, json.loads(e.body)["data"]["id"]) for e in events if e.type.startswith("batch.")]


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore.from_url(tmp_path.as_uri())


def settings_with(**overrides: object) -> Settings:
    return get_settings().model_copy(update={"default_model": MODEL, **overrides})


def request_line(custom_id: str, body: dict[str, object]) -> dict[str, object]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}


def submit(session: Session, store: ArtifactStore, lines: list[object], settings: Settings, **create) -> Batch:
    content = b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)
    file_id = files.new_file_id()
    key = files.storage_key(ADMIN.tenant, file_id)
    with store.open_write(key) as sink:
        sink.write(content)
    files.record_file(session, file_id, Received("in.jsonl", "batch", len(content)), key, ADMIN)
    payload = BatchCreate(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h", **create)
    return service.create_batch(session, payload, settings, ADMIN)


def run_all(scope, batch: Batch, settings: Settings) -> list[ChunkOutcome]:
    return [execution.run_chunk(scope, batch.job_id, start, embed_requests, settings) for start in batch.chunk_starts]


def read_lines(store: ArtifactStore, session: Session, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    file = files.get_file(session, file_id, ADMIN)
    with store.open_read(file.storage_key) as source:
        return [json.loads(line) for line in source]


def sync_vectors(texts: list[str]) -> np.ndarray:
    [embedded] = embed_requests(MODEL, [EmbedCall(texts, None, None, None)])
    return embedded.vectors


def test_a_batch_completes_with_sync_equal_vectors_and_request_errors_on_their_own_lines(
    db_session: Session, scope, store: ArtifactStore
) -> None:
    settings = settings_with(batch_task_tokens=8)
    lines = [
        request_line("one", {"input": "the cat"}),
        request_line("two", {"input": ["a dog", "blue river"], "encoding_format": "base64"}),
        request_line("empty", {"input": ""}),
        request_line("unknown", {"input": "x", "model": "no-such-model"}),
        request_line("bad-body", {"input": 3}),
        request_line("ids", {"input": [[5, 6, 7]], "model": MODEL}),
    ]
    batch = submit(db_session, store, lines, settings)
    assert execution.validate(scope, batch.job_id, store, settings).value == "in_progress"
    db_session.refresh(batch)
    assert (batch.status, batch.total, len(batch.chunk_starts) > 1) == ("in_progress", 6, True)
    outcomes = run_all(scope, batch, settings)
    assert sum(o.completed for o in outcomes) == 3 and sum(o.failed for o in outcomes) == 3
    assert [o.ended for o in outcomes].count(True) == 1
    assert execution.finalize(scope, batch.job_id, store, settings).value == "completed"
    db_session.refresh(batch)
    assert (batch.status, batch.completed, batch.failed) == ("completed", 3, 3)
    assert batch.completed_at is not None and batch.finalizing_at is not None

    output = {line["custom_id"]: line for line in read_lines(store, db_session, batch.output_file_id)}
    assert list(output) == ["one", "two", "ids"]
    one = output["one"]["response"]
    assert one["status_code"] == 200 and output["one"]["error"] is None
    assert one["body"]["object"] == "list" and one["body"]["model"] == MODEL
    assert one["body"]["usage"]["prompt_tokens"] == one["body"]["usage"]["total_tokens"] > 0
    np.testing.assert_allclose(one["body"]["data"][0]["embedding"], sync_vectors(["the cat"])[0], atol=2e-6)
    two = output["two"]["response"]["body"]["data"]
    decoded = np.stack([np.frombuffer(__import__("base64").b64decode(d["embedding"]), "<f4") for d in two])
    np.testing.assert_allclose(decoded, sync_vectors(["a dog", "blue river"]), atol=2e-6)
    assert [d["index"] for d in two] == [0, 1]

    errors = {line["custom_id"]: line for line in read_lines(store, db_session, batch.error_file_id)}
    assert list(errors) == ["empty", "unknown", "bad-body"]
    assert errors["empty"]["response"]["status_code"] == 400
    assert "input[0] is an empty string" in errors["empty"]["response"]["body"]["error"]["message"]
    assert errors["unknown"]["response"]["status_code"] == 404
    assert errors["unknown"]["response"]["body"]["error"]["code"] == "model_not_found"
    assert errors["bad-body"]["response"]["body"]["error"]["param"] == "input"
    job = JobRepository(db_session).get(batch.job_id)
    db_session.refresh(job)
    assert (job.status, job.total, job.done, job.failed) == ("succeeded", 6, 3, 3)
    assert batch_events(db_session, batch) == [("batch.completed", batch.id)]


def test_redelivered_tasks_change_nothing(db_session: Session, scope, store: ArtifactStore) -> None:
    settings = settings_with(batch_task_tokens=4)
    batch = submit(db_session, store, [request_line(f"r{i}", {"input": f"text {i}"}) for i in range(4)], settings)
    execution.validate(scope, batch.job_id, store, settings)
    assert execution.validate(scope, batch.job_id, store, settings) is None
    db_session.refresh(batch)
    first = run_all(scope, batch, settings)
    again = run_all(scope, batch, settings)
    assert sum(o.completed for o in first) == 4
    assert again == [ChunkOutcome(0, 0)] * len(batch.chunk_starts)
    assert execution.finalize(scope, batch.job_id, store, settings) is not None
    output = read_lines(store, db_session, batch.output_file_id or _refreshed(db_session, batch).output_file_id)
    assert execution.finalize(scope, batch.job_id, store, settings) is None
    assert batch_events(db_session, batch) == [("batch.completed", batch.id)]  # announced once
    assert sorted(line["custom_id"] for line in output) == ["r0", "r1", "r2", "r3"]
    assert (batch.completed, batch.failed) == (4, 0)


def _refreshed(session: Session, batch: Batch) -> Batch:
    session.refresh(batch)
    return batch


def test_a_file_with_broken_lines_fails_validation_with_each_line_named(
    db_session: Session, scope, store: ArtifactStore
) -> None:
    settings = settings_with()
    lines = [request_line("a", {"input": "x"}), b"{oops", request_line("a", {"input": "y"})]
    batch = submit(db_session, store, lines, settings)
    assert execution.validate(scope, batch.job_id, store, settings).value == "failed"
    assert execution.finalize(scope, batch.job_id, store, settings).value == "failed"
    db_session.refresh(batch)
    assert batch.status == "failed" and batch.failed_at is not None
    assert [(e["line"], e["code"]) for e in batch.errors] == [(2, "invalid_json_line"), (3, "duplicate_custom_id")]
    assert (batch.output_file_id, batch.error_file_id) == (None, None)
    job = JobRepository(db_session).get(batch.job_id)
    db_session.refresh(job)
    assert job.status == "failed" and "not valid JSON" in job.error
    assert batch_events(db_session, batch) == [("batch.failed", batch.id)]


def test_output_files_expire_as_the_batch_asked(db_session: Session, scope, store: ArtifactStore) -> None:
    settings = settings_with()
    lines = [request_line("ok", {"input": "x"}), request_line("bad", {"input": ""})]
    policy = {"anchor": "created_at", "seconds": 7200}
    batch = submit(db_session, store, lines, settings, output_expires_after=policy)
    execution.validate(scope, batch.job_id, store, settings)
    db_session.refresh(batch)
    run_all(scope, batch, settings)
    assert execution.finalize(scope, batch.job_id, store, settings).value == "completed"
    db_session.refresh(batch)
    for file_id in (batch.output_file_id, batch.error_file_id):
        file = files.get_file(db_session, file_id, ADMIN)
        assert file.expires_at is not None
        left = (file.expires_at - file.created_at).total_seconds()
        assert 7190 < left < 7210, left


def test_a_line_postgres_could_not_store_fails_validation_instead_of_the_task(
    db_session: Session, scope, store: ArtifactStore
) -> None:
    # NUL and lone surrogates reached Postgres and raised in the task: redelivered until the reaper gave up,
    # the batch left validating.
    settings = settings_with()
    lines = [
        request_line("a", {"input": "x"}),
        request_line("b", {"input": "a\x00b"}),
        request_line("c\udfff", {"input": "y"}),
        request_line("d", {"input": "z", "dimensions": float("nan")}),
    ]
    batch = submit(db_session, store, lines, settings)
    assert execution.validate(scope, batch.job_id, store, settings).value == "failed"
    assert execution.finalize(scope, batch.job_id, store, settings).value == "failed"
    db_session.refresh(batch)
    assert batch.status == "failed"
    codes = [(e["line"], e["code"]) for e in batch.errors]
    assert codes == [(2, "nul_character"), (3, "invalid_unicode"), (4, "invalid_number")]


def test_a_worker_process_ends_a_batch_with_its_job(tmp_path: Path) -> None:
    """The reaper runs in a worker, which imports no API module: the hook ending a batch with its job must be
    registered there too (it was only in the API's process, so a batch failed by the reaper stayed validating)."""
    code = (
        "import workers.celery_app as w; w.celery_app.loader.import_default_modules(); "
        "from app.jobs import lifecycle; print(sorted(lifecycle._END_HOOKS))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split("\n")[-2] == "['batch']", done.stdout + done.stderr


def test_a_batch_past_its_window_ends_expired_with_its_partial_output(
    db_session: Session, scope, store: ArtifactStore
) -> None:
    sync_vectors(["warm the model up"])  # so that the window measures the batch, not the model's load
    window = 3.0
    settings = settings_with(batch_task_tokens=4, batch_completion_window_s=window)
    started = time.monotonic()
    batch = submit(db_session, store, [request_line(f"r{i}", {"input": f"text {i}"}) for i in range(3)], settings)
    execution.validate(scope, batch.job_id, store, settings)
    db_session.refresh(batch)
    first = execution.run_chunk(scope, batch.job_id, batch.chunk_starts[0], embed_requests, settings)
    assert first.completed == 1 and time.monotonic() - started < window
    time.sleep(max(0.0, window - (time.monotonic() - started)) + 0.2)
    rest = [execution.run_chunk(scope, batch.job_id, s, embed_requests, settings) for s in batch.chunk_starts[1:]]
    assert rest[0] == ChunkOutcome(0, 0, ended=True) and rest[1] == ChunkOutcome(0, 0)
    assert execution.finalize(scope, batch.job_id, store, settings).value == "expired"
    db_session.refresh(batch)
    assert batch.status == "expired" and batch.expired_at is not None
    assert [line["custom_id"] for line in read_lines(store, db_session, batch.output_file_id)] == ["r0"]
    not_run = read_lines(store, db_session, batch.error_file_id)
    assert [(line["custom_id"], line["response"], line["error"]["code"]) for line in not_run] == [
        ("r1", None, "batch_expired"),
        ("r2", None, "batch_expired"),
    ]
    assert batch_events(db_session, batch) == [("batch.expired", batch.id)]


def test_cancel_stops_between_tasks_and_keeps_what_completed(db_session: Session, scope, store: ArtifactStore) -> None:
    settings = settings_with(batch_task_tokens=4)
    batch = submit(db_session, store, [request_line(f"r{i}", {"input": f"text {i}"}) for i in range(3)], settings)
    execution.validate(scope, batch.job_id, store, settings)
    db_session.refresh(batch)
    assert execution.run_chunk(scope, batch.job_id, batch.chunk_starts[0], embed_requests, settings).completed == 1
    assert service.cancel_batch(db_session, batch.id, ADMIN).status == "cancelling"
    later = [execution.run_chunk(scope, batch.job_id, s, embed_requests, settings) for s in batch.chunk_starts[1:]]
    assert later == [ChunkOutcome(0, 0)] * 2
    assert execution.finalize(scope, batch.job_id, store, settings).value == "cancelled"
    db_session.refresh(batch)
    assert (batch.status, batch.completed) == ("cancelled", 1) and batch.cancelled_at is not None
    assert [line["custom_id"] for line in read_lines(store, db_session, batch.output_file_id)] == ["r0"]
    assert [line["error"]["code"] for line in read_lines(store, db_session, batch.error_file_id)] == [
        "batch_cancelled",
        "batch_cancelled",
    ]
    assert batch_events(db_session, batch) == [("batch.cancelled", batch.id)]


def test_the_reaper_requeues_what_a_batch_has_left(db_session: Session, scope, store: ArtifactStore) -> None:
    settings = settings_with(batch_task_tokens=4)
    batch = submit(db_session, store, [request_line(f"r{i}", {"input": f"text {i}"}) for i in range(3)], settings)
    job = JobRepository(db_session).get(batch.job_id)
    assert execution.requeue_batch(db_session, job) == 1  # validation again
    execution.validate(scope, batch.job_id, store, settings)
    db_session.refresh(batch)
    execution.run_chunk(scope, batch.job_id, batch.chunk_starts[1], embed_requests, settings)
    assert execution.requeue_batch(db_session, job) == 2  # the two tasks with requests unanswered
    for start in batch.chunk_starts:
        execution.run_chunk(scope, batch.job_id, start, embed_requests, settings)
    assert execution.requeue_batch(db_session, job) == 1  # finalize


def test_a_batch_whose_input_file_was_deleted_fails_saying_so(db_session: Session, scope, store: ArtifactStore) -> None:
    settings = settings_with()
    batch = submit(db_session, store, [request_line("a", {"input": "x"})], settings)
    files.delete_file(db_session, batch.input_file_id, ADMIN, store)
    assert execution.validate(scope, batch.job_id, store, settings).value == "failed"
    execution.finalize(scope, batch.job_id, store, settings)
    db_session.refresh(batch)
    assert batch.status == "failed"
    assert [(e["code"], e["param"]) for e in batch.errors] == [("file_not_found", "input_file_id")]
