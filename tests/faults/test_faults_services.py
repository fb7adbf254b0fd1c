"""Faults: Redis restarted mid-job, Postgres restarted mid-job, and task messages lost from Redis.

A real API, Celery worker and celery beat (scheduling the reaper) run against a Postgres and a Redis of this
module's own, which the tests stop and start again; at the end each job has exactly one vector per input.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import httpx
import kombu.pools
import pytest
from sqlalchemy import select
from support.faults import FaultStack, exactly_once, fault_stack, submit
from support.processes import ManagedProcess, start_api, start_beat, start_worker
from support.texts import SENTENCES
from support.waiting import wait_until

from app.maintenance.broker import queue_keys
from app.models.recovery import JobRecovery
from app.observability.metrics import queue_depths

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

INPUTS = 320  # 20 batches of 16
OUTAGE_S = 8.0
# A quick reaper, so a lost job is found within seconds rather than a minute.
REAPER_ENV = {"EMBEDQ_REAPER_GRACE_S": "10", "EMBEDQ_REAPER_INTERVAL_S": "3"}
QUEUES = ["inference", "maintenance"]
OUTAGE_JOB = {"input": ["sent while Redis is down"], "idempotency_key": "during-the-outage"}


def short_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{i}. " + " ".join(rng.choices(SENTENCES, k=rng.randint(1, 4))) for i in range(n)]


@pytest.fixture(scope="module")
def stack(service_env: dict[str, str]) -> Iterator[FaultStack]:
    with fault_stack({**service_env, **REAPER_ENV}) as fresh:
        yield fresh


@pytest.fixture(scope="module")
def fault_api(stack: FaultStack) -> Iterator[ManagedProcess]:
    process = start_api(stack.env)
    yield process
    process.stop()


@pytest.fixture
def clean(stack: FaultStack) -> Iterator[FaultStack]:
    # This process's pooled broker connections (worker pings) may date from before a Redis restart.
    kombu.pools.reset()
    stack.reset()
    beat = start_beat(stack.env)
    yield stack
    beat.stop()


def wait_progress_after(stack: FaultStack, job_id: str, done: int, timeout: float = 300) -> float:
    """Return the seconds until the job's done count passes ``done``."""
    started = time.monotonic()
    stack.wait_done_at_least(job_id, done + 1, timeout=timeout)
    return time.monotonic() - started


def test_redis_restarted_mid_job(clean: FaultStack, fault_api: ManagedProcess) -> None:
    worker = start_worker(clean.env, queues=QUEUES)
    try:
        job_id = submit(fault_api.base_url, short_texts(INPUTS, seed=3))
        clean.wait_done_at_least(job_id, 48)
        clean.redis.stop()
        with httpx.Client(base_url=fault_api.base_url, timeout=30) as client:
            assert client.get(f"/jobs/{job_id}").status_code == 200  # reads need only Postgres
            during = client.post("/jobs/embeddings", json=OUTAGE_JOB)
            assert during.status_code == 503 and during.headers["retry-after"], during.text
            assert "idempotency_key" in during.json()["detail"]
            assert client.get("/readyz").status_code == 503
            time.sleep(OUTAGE_S)
            done_at_restart = clean.done(job_id)
            clean.redis.start()
            resumed_after = wait_progress_after(clean, job_id, done_at_restart)
            counts = clean.wait_terminal(job_id)
            assert exactly_once(counts, INPUTS), (counts, worker.log_tail())
            # The job recorded during the outage never reached Redis; the reaper queues it.
            again = client.post("/jobs/embeddings", json=OUTAGE_JOB)
            assert again.status_code == 200, again.text
            late = clean.wait_terminal(again.json()["id"], timeout=180)
            assert exactly_once(late, 1), (late, worker.log_tail())
    finally:
        clean.redis.start()
        worker.stop()
    print(f"\n[fault] Redis down {OUTAGE_S:.0f}s mid-job: progress resumed {resumed_after:.1f}s after it came back")


def test_postgres_restarted_mid_job(clean: FaultStack, fault_api: ManagedProcess) -> None:
    worker = start_worker(clean.env, queues=QUEUES)
    try:
        job_id = submit(fault_api.base_url, short_texts(INPUTS, seed=4))
        clean.wait_done_at_least(job_id, 48)
        clean.postgres.stop()
        with httpx.Client(base_url=fault_api.base_url, timeout=30) as client:
            down = client.get(f"/jobs/{job_id}")
            assert down.status_code == 503 and down.headers["retry-after"], down.text
            assert client.get("/readyz").status_code == 503
            time.sleep(OUTAGE_S)
            clean.postgres.start()
            assert client.get(f"/jobs/{job_id}").status_code == 200
        done_at_restart = clean.done(job_id)
        resumed_after = wait_progress_after(clean, job_id, done_at_restart)
        counts = clean.wait_terminal(job_id)
        assert exactly_once(counts, INPUTS), (counts, worker.log_tail())
    finally:
        clean.postgres.start()
        worker.stop()
    print(f"\n[fault] Postgres down {OUTAGE_S:.0f}s mid-job: progress resumed {resumed_after:.1f}s after it came back")


def test_task_messages_deleted_from_redis_are_reenqueued_by_the_reaper(
    clean: FaultStack, fault_api: ManagedProcess
) -> None:
    # Only the reaper's queue is consumed, so the job's batches wait in `inference`... until deleted.
    worker = start_worker(clean.env, queues=["maintenance"])
    try:
        job_id = submit(fault_api.base_url, short_texts(64, seed=5))
        client = clean.redis_client()
        try:
            # Its four batches wait at their tenant's priorities: in the queue's list for each priority step.
            assert queue_depths(client)["inference"] == 4
            client.delete(*queue_keys(["inference"]))
        finally:
            client.close()
        lost_at = time.monotonic()
        wait_until(
            lambda: queue_depths(clean.redis_client())["inference"],
            120,
            lambda _: f"the reaper re-enqueued nothing\n{worker.log_tail()}",
            interval=0.5,
        )
        found_after = time.monotonic() - lost_at
    finally:
        worker.stop()
    worker = start_worker(clean.env, queues=QUEUES)
    try:
        counts = clean.wait_terminal(job_id)
        assert exactly_once(counts, 64), (counts, worker.log_tail())
    finally:
        worker.stop()
    with clean.engine.connect() as conn:
        recoveries = conn.execute(select(JobRecovery.action, JobRecovery.tasks).where(JobRecovery.job_id == job_id))
        assert [tuple(r) for r in recoveries] == [("requeued", 4)]
    print(f"\n[fault] 4 task messages deleted from Redis: re-enqueued by the reaper {found_after:.1f}s later")
