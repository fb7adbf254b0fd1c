"""End to end: a fine-tune that overwrites an alias is served at once by every worker that had the old one.

Two real Celery worker processes hold the first model: the session's worker embeds the jobs, and this
module's own thread-pool worker answers /v1/embeddings (the session's worker stops consuming the sync
queue meanwhile). A second fine-tune with ``overwrite`` renames a new folder into place; the very next
requests to both must use the new weights, with no restart and no message to either worker.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from celery import Celery
from support.processes import ManagedProcess, start_worker
from support.tiny_models import make_tiny_bert
from support.waiting import wait_job, wait_until

from app.catalog.resolver import resolve_model
from app.core.config import get_settings
from workers.runtime.encoder import Encoder

pytestmark = pytest.mark.e2e

TEXTS = ["a red cat in the house", "music by the river", "the blue machine"]
NOUNS = "cat dog house river mountain city music book water food language machine".split()


@pytest.fixture
def sync_worker(service_env: dict[str, str], worker: ManagedProcess) -> Iterator[ManagedProcess]:
    """Yield a second worker process that alone answers /v1/embeddings while the test runs."""
    queue = get_settings().sync_queue
    control = Celery("embedq-tests", broker=service_env["EMBEDQ_REDIS_URL"])
    control.control.cancel_consumer(queue, destination=[worker.nodename], reply=True)
    second = start_worker(service_env, queues=(queue,), concurrency=2, pool="threads")
    try:
        yield second
    finally:
        second.stop(timeout=60)
        control.control.add_consumer(queue, destination=[worker.nodename], reply=True)
        control.close()


def pairs(n: int) -> str:
    lines = (f"{NOUNS[i % 12]} {i}\tthe {NOUNS[i % 12]} is near the {NOUNS[(i * 7 + 3) % 12]} {i}" for i in range(n))
    return "\n".join(lines)


def fine_tune(client: httpx.Client, body: dict) -> None:
    created = client.post("/fine-tune", json=body)
    assert created.status_code == 200, created.text
    job_id = created.json()["job_id"]
    status = wait_until(
        lambda: client.get(f"/train-status/{job_id}").json(),
        300,
        lambda status: status,
        until=lambda status: status["status"] not in ("pending", "running"),
        interval=0.3,
    )
    assert status["status"] == "completed", status


def embed_by_job(client: httpx.Client, model: str) -> np.ndarray:
    created = client.post("/jobs/embeddings", json={"input": TEXTS, "model": model})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    job = wait_job(client, job_id, timeout=120)
    assert job["status"] == "succeeded", job
    return np.asarray([r["embedding"] for r in client.get(f"/jobs/{job_id}/results").json()["data"]], np.float32)


def embed_sync(client: httpx.Client, model: str) -> np.ndarray:
    answer = client.post("/v1/embeddings", json={"input": TEXTS, "model": model})
    assert answer.status_code == 200, answer.text
    return np.asarray([d["embedding"] for d in answer.json()["data"]], np.float32)


def test_an_overwritten_alias_is_served_with_its_new_weights_by_every_worker_that_had_the_old(
    api, worker, sync_worker, clean_state, service_env
) -> None:
    base = f"ow-base-{uuid.uuid4().hex[:6]}"
    alias = f"ow-alias-{uuid.uuid4().hex[:6]}"
    make_tiny_bert(Path(service_env["EMBEDQ_MODELS_DIR"]) / base)
    body = {"text_content": pairs(72), "model_name": alias, "base_model": base, "batch_size": 4}
    with httpx.Client(base_url=api.base_url, timeout=60) as client:
        fine_tune(client, {**body, "learning_rate": 1e-3})
        first_by_job, first_sync = embed_by_job(client, alias), embed_sync(client, alias)

        fine_tune(client, {**body, "learning_rate": 2e-2, "seed": 5, "overwrite": True})
        new_weights = Encoder(resolve_model(alias, get_settings())).encode(TEXTS)
        assert not np.allclose(first_by_job, new_weights, atol=1e-3)
        np.testing.assert_allclose(embed_by_job(client, alias), new_weights, atol=1e-5)
        np.testing.assert_allclose(embed_sync(client, alias), new_weights, atol=1e-5)
        np.testing.assert_allclose(first_sync, first_by_job, atol=1e-5)
    for process in (worker, sync_worker):
        assert f"unloaded model {alias} its folder changed" in process.log_text(), process.name
