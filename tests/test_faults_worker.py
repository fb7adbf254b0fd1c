"""Faults: a worker's pool child, then the whole worker, killed with SIGKILL in the middle of an embedding job.

Each test runs a real API and Celery worker against a Postgres and a Redis of its module's own, and checks
in Postgres at the end that the job succeeded with exactly one vector per input.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import psutil
import pytest
from support.faults import FaultStack, exactly_once, fault_stack, submit
from support.processes import ManagedProcess, start_api, start_worker
from support.texts import SENTENCES

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

INPUTS = 320  # 20 batches of 16
# The bound for picking up a killed worker's batches after a restart.
PICKUP_BOUND_S = 60.0


def short_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{i}. " + " ".join(rng.choices(SENTENCES, k=rng.randint(1, 4))) for i in range(n)]


@pytest.fixture(scope="module")
def stack(service_env: dict[str, str]) -> Iterator[FaultStack]:
    with fault_stack(service_env) as fresh:
        yield fresh


@pytest.fixture(scope="module")
def fault_api(stack: FaultStack) -> Iterator[ManagedProcess]:
    process = start_api(stack.env)
    yield process
    process.stop()


@pytest.fixture
def clean(stack: FaultStack) -> FaultStack:
    stack.reset()
    return stack


def test_killed_pool_child_loses_and_duplicates_nothing(clean: FaultStack, fault_api: ManagedProcess) -> None:
    worker = start_worker(clean.env, queues=["inference"])
    try:
        job_id = submit(fault_api.base_url, short_texts(INPUTS, seed=1))
        before = clean.wait_done_at_least(job_id, 64)
        in_flight = clean.held_batches()
        psutil.Process(worker.pid).children()[0].kill()
        redone_after = clean.wait_embedded(job_id, in_flight, timeout=300)
        counts = clean.wait_terminal(job_id)
        assert exactly_once(counts, INPUTS), (counts, worker.log_tail())
        assert worker.alive(), worker.log_tail()
        assert "WorkerLostError" in worker.log_text(), worker.log_tail()
    finally:
        worker.stop()
    print(f"\n[fault] pool child killed at {before}/{INPUTS} holding {in_flight}: redone {redone_after:.1f}s later")


def test_killed_worker_batches_are_picked_up_after_restart(clean: FaultStack, fault_api: ManagedProcess) -> None:
    worker = start_worker(clean.env, queues=["inference"])
    try:
        job_id = submit(fault_api.base_url, short_texts(INPUTS, seed=2))
        before = clean.wait_done_at_least(job_id, 64)
        worker.kill()  # SIGKILL to the parent and its pool children at once
    finally:
        worker.stop()
    orphaned = clean.held_batches()
    assert orphaned, "the killed worker held no message: nothing to recover"
    assert clean.counts(job_id)["status"] == "running"

    restarted_at = time.monotonic()
    worker = start_worker(clean.env, queues=["inference"])
    try:
        # The killed worker's batches are restored to the front of the queue once unstamped for the
        # visibility timeout; "picked up" = embedded by the new worker.
        clean.wait_embedded(job_id, orphaned, timeout=PICKUP_BOUND_S + 120)
        picked_up_after = time.monotonic() - restarted_at
        assert picked_up_after < PICKUP_BOUND_S, (
            f"the killed worker's batches took {picked_up_after:.0f}s after the restart\n{worker.log_tail()}"
        )
        counts = clean.wait_terminal(job_id)
        assert exactly_once(counts, INPUTS), (counts, worker.log_tail())
        assert clean.held_batches() == []
    finally:
        worker.stop()
    print(
        f"\n[fault] worker killed at {before}/{INPUTS} holding {orphaned}: "
        f"picked up and embedded {picked_up_after:.1f}s after the restart"
    )
