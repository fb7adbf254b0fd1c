"""End to end: the real API, a training worker and an inference worker fine-tune the real MiniLM on tiny data.

The session's all-queues worker embeds; for this module it stops consuming the training queue, so every
training task runs in this module's own training worker (the one the SIGTERM test stops).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from celery import Celery
from support.processes import ManagedProcess, start_worker
from support.waiting import wait_job, wait_until

from app.core.config import get_settings
from app.core.db import session_scope
from app.models.training import TrainingRun

pytestmark = pytest.mark.e2e

TOPICS = "cat dog river mountain city music book water bread train ship garden".split()
PAIRS = [
    (f"tell me about the {t} number {i}", f"item {i} is about a {t} and nothing else") for i, t in enumerate(TOPICS * 4)
]
TSV = "\n".join(f"{q}\t{p}" for q, p in PAIRS)
TEXTS = ["a cat sleeping by the river", "bread from the garden", "music on a ship"]
TERMINAL = {"completed", "failed", "cancelled"}


@pytest.fixture(scope="module")
def training_worker(service_env: dict[str, str], worker: ManagedProcess) -> Iterator[list[ManagedProcess]]:
    """Yield [the module's training-only worker]; a test may replace it. Reports progress at every step."""
    control = Celery("embedq-tests", broker=service_env["EMBEDQ_REDIS_URL"])
    control.control.cancel_consumer("training", destination=[worker.nodename], reply=True)
    holder = [start_worker(training_env(service_env), queues=("training",))]
    yield holder
    holder[-1].stop(timeout=120)
    control.control.add_consumer("training", destination=[worker.nodename], reply=True)
    control.close()


def training_env(service_env: dict[str, str], **extra: str) -> dict[str, str]:
    return {**service_env, "EMBEDQ_TRAINING_PROGRESS_EVERY_STEPS": "1", **extra}


def watch(client: httpx.Client, job_id: str, until: set[str], timeout: float = 900) -> list[dict]:
    """Poll /train-status until a status in ``until``; return every answer seen."""
    seen: list[dict] = []

    def answer() -> dict:
        r = client.get(f"/train-status/{job_id}")
        assert r.status_code == 200, r.text
        seen.append(r.json())
        return seen[-1]

    wait_until(
        answer,
        timeout,
        lambda last: f"training job {job_id} did not reach {until} in {timeout}s: {last}",
        until=lambda status: status["status"] in until,
    )
    return seen


def wait_steps(client: httpx.Client, job_id: str, at_least: int) -> dict:
    for status in watch(client, job_id, TERMINAL | {"running"}):
        if status["status"] == "running" and status["steps"] >= at_least:
            return status
    while True:
        status = watch(client, job_id, TERMINAL | {"running"})[-1]
        assert status["status"] == "running", status
        if status["steps"] >= at_least:
            return status
        time.sleep(0.2)


def embed_by_job(client: httpx.Client, model: str | None) -> np.ndarray:
    body = {"input": TEXTS, **({"model": model} if model else {})}
    created = client.post("/jobs/embeddings", json=body)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    job = wait_job(client, job_id)
    assert job["status"] == "succeeded", job
    rows = client.get(f"/jobs/{job_id}/results").json()["data"]
    return np.asarray([r["embedding"] for r in rows], dtype=np.float32)


def assert_serves_alias(client: httpx.Client, alias: str) -> None:
    """The alias embeds through the job path and /v1/embeddings, alike, and differs from the base."""
    tuned = embed_by_job(client, alias)
    base = embed_by_job(client, None)
    assert tuned.shape == base.shape == (len(TEXTS), 384)
    assert np.abs(tuned - base).max() > 1e-3
    sync = client.post("/v1/embeddings", json={"input": TEXTS, "model": alias})
    assert sync.status_code == 200, sync.text
    vectors = np.asarray([d["embedding"] for d in sync.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(vectors, tuned, atol=1e-5)


def assert_moved_through_states(seen: list[dict], total: int) -> None:
    statuses = [s["status"] for s in seen]
    order = {"pending": 0, "running": 1, "completed": 2}
    assert [order[s] for s in statuses] == sorted(order[s] for s in statuses), statuses
    assert statuses[-1] == "completed"
    running_steps = [s["steps"] for s in seen if s["status"] == "running"]
    assert running_steps == sorted(running_steps)
    assert len({s for s in running_steps if 0 < s <= total}) >= 2, running_steps


def test_full_fine_tune_serves_its_alias_at_once(api, worker, training_worker, clean_state) -> None:
    alias = f"e2e-full-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=api.base_url, timeout=60) as client:
        created = client.post(
            "/fine-tune",
            json={"text_content": TSV + "\nnot a pair\n", "model_name": alias, "batch_size": 8, "learning_rate": 1e-4},
        )
        assert created.status_code == 200, created.text
        assert created.json()["status"] == "pending"
        job_id = created.json()["job_id"]
        seen = watch(client, job_id, TERMINAL)
        done = seen[-1]
        assert done["status"] == "completed", done
        assert_moved_through_states(seen, done["total_steps"])
        assert done["steps"] == done["total_steps"] == 3 and done["epoch"] == 1.0 and done["progress"] == 100
        assert done["model"] == alias and done["loss"] is not None and done["error"] is None
        assert {"recall@1", "recall@10", "mrr@10"} <= set(done["eval"]["base"]) & set(done["eval"]["trained"])
        assert done["data"]["skipped_lines"] == 1
        job = client.get(f"/jobs/{job_id}").json()
        assert (job["kind"], job["status"]) == ("fine_tune", "succeeded")
        listed = {m["name"]: m for m in client.get("/fine-tuned-models").json()}
        assert listed[alias]["kind"] == "full" and listed[alias]["dimension"] == 384
        assert_serves_alias(client, alias)


def test_lora_fine_tune_from_an_uploaded_jsonl_with_hard_negatives(api, worker, training_worker, clean_state) -> None:
    alias = f"e2e-lora-{uuid.uuid4().hex[:6]}"
    lines = [
        json.dumps({"query": q, "positive": p, "negative": PAIRS[(i + 1) % len(PAIRS)][1]})
        for i, (q, p) in enumerate(PAIRS)
    ]
    with httpx.Client(base_url=api.base_url, timeout=60) as client:
        created = client.post(
            "/fine-tune-lora",
            data={"model_name": alias, "batch_size": "8", "learning_rate": "2e-3", "r": "8"},
            files={"file": ("pairs.jsonl", ("\n".join(lines) + "\n{oops\n").encode(), "application/jsonl")},
        )
        assert created.status_code == 200, created.text
        job_id = created.json()["job_id"]
        seen = watch(client, job_id, TERMINAL)
        done = seen[-1]
        assert done["status"] == "completed", done
        assert_moved_through_states(seen, done["total_steps"])
        assert done["data"]["with_negatives"] == len(PAIRS) and done["data"]["skipped_lines"] == 1
        models_dir = Path(get_settings().models_dir or "")
        assert (models_dir / alias / "adapter_model.safetensors").is_file()
        assert (client.get(f"/jobs/{job_id}").json()["kind"]) == "fine_tune_lora"
        assert_serves_alias(client, alias)


def test_cancel_stops_training_and_registers_nothing(api, worker, training_worker, clean_state) -> None:
    alias = f"e2e-cancel-{uuid.uuid4().hex[:6]}"
    models_dir = Path(get_settings().models_dir or "")
    with httpx.Client(base_url=api.base_url, timeout=60) as client:
        body = {"text_content": TSV, "model_name": alias, "batch_size": 2, "epochs": 3}
        job_id = client.post("/fine-tune-lora", json=body).json()["job_id"]
        running = wait_steps(client, job_id, at_least=1)
        cancelled = client.post(f"/jobs/{job_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        wait_until(
            lambda: not (models_dir / ".training" / job_id).exists(),
            300,
            "the cancelled job's work folder is still there",
            interval=0.5,
        )
        status = client.get(f"/train-status/{job_id}").json()
        assert status["status"] == "cancelled" and status["model"] is None
        assert running["steps"] <= status["steps"] < status["total_steps"]
        assert not (models_dir / alias).exists()
        assert alias not in {m["name"] for m in client.get("/fine-tuned-models").json()}


def test_sigterm_checkpoints_and_a_new_worker_resumes(api, worker, training_worker, service_env, clean_state) -> None:
    alias = f"e2e-resume-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=api.base_url, timeout=60) as client:
        body = {"text_content": TSV, "model_name": alias, "batch_size": 2, "epochs": 2}
        job_id = client.post("/fine-tune-lora", json=body).json()["job_id"]
        wait_steps(client, job_id, at_least=2)
        exit_code = training_worker[-1].stop(timeout=300)
        assert exit_code == 0, training_worker[-1].log_tail()
        interrupted = client.get(f"/train-status/{job_id}").json()
        assert interrupted["status"] == "running", interrupted
        assert "interrupted" in interrupted["message"], training_worker[-1].log_tail(80)
        with session_scope() as session:
            run = session.get(TrainingRun, uuid.UUID(job_id))
            assert run is not None and run.checkpoint_step is not None
            checkpoint_step = run.checkpoint_step
        assert 2 <= checkpoint_step < interrupted["total_steps"]

        training_worker.append(start_worker(training_env(service_env), queues=("training",)))
        done = watch(client, job_id, TERMINAL)[-1]
        assert done["status"] == "completed", done
        assert done["steps"] == done["total_steps"] and done["model"] == alias
        with session_scope() as session:
            run = session.get(TrainingRun, uuid.UUID(job_id))
            assert run is not None and run.resumed_from_step == checkpoint_step
        assert f"resumes from step {checkpoint_step}" in training_worker[-1].log_text()
