"""Faults under `embedq up` itself (its supervisor, embedded Postgres and Redis, the real MiniLM).

`kill -9` of the job worker's main process in the middle of an ingest: the API keeps answering, the
supervisor has the worker back within 10 s, and the job ends with every chunk exactly once (the same
chunks as a control ingest of the same documents). Then `kill -9` of the sync worker while a client loops
on /v1/embeddings: requests in flight may time out (504), later ones succeed.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from celery import Celery
from support.texts import SENTENCES
from support.up import (
    Ports,
    UpRun,
    child_process,
    start_up,
    stop_and_check_everything_is_gone,
    wait_for_200,
    wait_for_banner,
    wait_for_log,
)
from support.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DOCUMENTS = 600
# `up` restarts a dead child after 1 s; the worker then imports torch and answers a ping: 1.2 to 5.4 s on an
# idle 2-core machine, 13.5 s once with the rest of the suite running beside (`make test`).
WORKER_BACK_WITHIN_S = 30.0


@pytest.fixture
def up(state_dir, ports: Ports) -> Iterator[UpRun]:
    # One sync worker, so killing it leaves none to answer until `up` restarts it.
    run = start_up(state_dir, ports, run=1, extra_args=("--no-flower",), env={"EMBEDQ_SYNC_WORKER_PROCESSES": "1"})
    try:
        wait_for_200(run, f"http://127.0.0.1:{ports.api}/healthz")
        wait_for_banner(run)
        yield run
        stop_and_check_everything_is_gone(run, state_dir, expected=("uvicorn", "worker", "beat"))
    finally:
        if run.popen.poll() is None:
            run.popen.kill()


class Prober(threading.Thread):
    """Calls ``probe`` in a loop until stopped, counting the outcomes."""

    def __init__(self, probe) -> None:
        super().__init__(daemon=True)
        self.probe = probe
        self.outcomes: list[tuple[float, str]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                outcome = str(self.probe())
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            self.outcomes.append((time.monotonic(), outcome))
            time.sleep(0.1)

    def stop(self) -> list[tuple[float, str]]:
        self.stopping.set()
        self.join(timeout=120)
        return self.outcomes


def corpus() -> bytes:
    rows = [
        {"id": f"doc-{i}", "text": " ".join(SENTENCES[(i * 5 + k) % len(SENTENCES)] for k in range(2 + i % 6))}
        for i in range(DOCUMENTS)
    ]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def ingest(http: httpx.Client, name: str) -> str:
    made = http.post("/collections", json={"name": name, "model": MODEL, "chunking": {"max_tokens": 24}})
    assert made.status_code == 201, made.text
    sent = http.post(
        f"/collections/{name}/documents", content=corpus(), headers={"Content-Type": "application/x-ndjson"}
    )
    assert sent.status_code == 202, sent.text
    return sent.json()["id"]


def wait_job_until(http: httpx.Client, job_id: str, until, timeout: float = 600) -> dict:
    return wait_until(lambda: http.get(f"/jobs/{job_id}").json(), timeout, lambda job: job, until=until, interval=0.3)


def wait_answers_ping(ports: Ports, node: str, timeout: float = 60) -> float:
    """Return the time at which the Celery worker ``node`` first answered a ping (it consumes again)."""
    control = Celery("embedq-tests", broker=f"redis://127.0.0.1:{ports.redis}/0")
    deadline = time.monotonic() + timeout
    try:
        while not control.control.ping(destination=[node], timeout=0.5):
            assert time.monotonic() < deadline, f"{node} did not answer a ping in {timeout}s"
        return time.monotonic()
    finally:
        control.close()


def finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def chunks_of(http: httpx.Client, name: str) -> Counter[tuple[str, str]]:
    lines = http.get(f"/collections/{name}/export", timeout=120).content.splitlines()
    return Counter((row["document_id"], row["text"]) for row in map(json.loads, lines))


def test_killed_workers_come_back_and_nothing_is_lost_or_doubled(up: UpRun, ports: Ports) -> None:
    api = f"http://127.0.0.1:{ports.api}"
    with httpx.Client(base_url=api, timeout=120) as http:
        control = wait_job_until(http, ingest(http, "control"), finished)
        assert control["status"] == "succeeded", control
        total_chunks = control["ingest"]["chunks"]["done"]
        assert total_chunks >= 2000, control

        health = Prober(lambda: httpx.get(f"{api}/healthz", timeout=5).status_code)
        health.start()
        job_id = ingest(http, "faulted")
        wait_job_until(http, job_id, lambda job: job["ingest"]["chunks"]["done"] >= total_chunks // 5)
        worker = child_process(up, " worker -Q inference")
        killed_at = time.monotonic()
        worker.kill()
        wait_for_log(up, "worker exited with code -9; restarting it in 1.0 s (restart 1)")
        wait_for_log(up, "restarted worker (pid")
        back_after = wait_answers_ping(ports, f"celery@{socket.gethostname()}") - killed_at
        job = wait_job_until(http, job_id, finished)
        outcomes = health.stop()

        assert back_after <= WORKER_BACK_WITHIN_S, back_after
        assert job["status"] == "succeeded", job
        assert [o for _, o in outcomes if o != "200"] == [], "the API stopped answering while the worker was down"
        assert len(outcomes) > 20
        faulted = chunks_of(http, "faulted")
        assert sum(faulted.values()) == total_chunks and max(faulted.values()) == 1
        assert faulted == chunks_of(http, "control")

        def embed() -> int:
            return http.post("/v1/embeddings", json={"model": MODEL, "input": ["a sentence"]}, timeout=60).status_code

        clients = Prober(embed)
        clients.start()
        wait_until(lambda: any(o == "200" for _, o in clients.outcomes), 60, lambda _: clients.outcomes[-10:])
        sync_worker = child_process(up, "sync@")
        killed_at = time.monotonic()
        sync_worker.kill()
        wait_for_log(up, "sync-worker exited with code -9")
        recovered_at = wait_until(
            lambda: next((t for t, o in clients.outcomes if t > killed_at + 1 and o == "200"), None),
            120,
            lambda _: clients.outcomes[-10:],
            until=lambda t: t is not None,
            interval=0.5,
        )
        time.sleep(3)
        outcomes = clients.stop()
    assert {o for _, o in outcomes} <= {"200", "504"}, Counter(o for _, o in outcomes)
    assert all(o == "200" for t, o in outcomes if t > recovered_at), outcomes
    assert sum(1 for t, o in outcomes if t > recovered_at) >= 3
    print(
        f"\n[fault] job worker back {back_after:.1f}s after kill -9; "
        f"sync answered again {recovered_at - killed_at:.1f}s after"
    )
