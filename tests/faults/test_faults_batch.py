"""Faults: the worker running a batch of a few thousand lines is killed with SIGKILL; the batch still completes.

A real API and Celery worker (bulk queue) against a Postgres and a Redis of this module's own. After the
kill a new worker picks up the tasks the dead one held (restored once unstamped for the visibility
timeout); the batch completes with each custom_id exactly once in its output file and in Postgres.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import openai
import pytest
from sqlalchemy import func, select
from support.faults import FaultStack, fault_stack
from support.processes import ManagedProcess, start_api, start_worker
from support.waiting import wait_until

from app.models.batch import BatchResult

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

LINES = 2000
WORDS = "cat dog river mountain city music book water bread train ship garden".split()
# Tasks of about 512 estimated tokens (some 60 lines each), so the batch has a few dozen and one is in flight.
BATCH_ENV = {"EMBEDQ_BATCH_TASK_TOKENS": "512"}


@pytest.fixture(scope="module")
def stack(service_env: dict[str, str]) -> Iterator[FaultStack]:
    with fault_stack({**service_env, **BATCH_ENV}) as fresh:
        yield fresh


@pytest.fixture(scope="module")
def fault_api(stack: FaultStack) -> Iterator[ManagedProcess]:
    process = start_api(stack.env)
    yield process
    process.stop()


def requests_file(lines: int, seed: int) -> bytes:
    """Return a JSONL file of ``lines`` requests of 1-2 short inputs each."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        inputs = [f"{i}.{j} {rng.choice(WORDS)} {rng.choice(WORDS)}" for j in range(rng.randint(1, 2))]
        out.append({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/embeddings", "body": {"input": inputs}})
    return b"".join(json.dumps(line).encode() + b"\n" for line in out)


def test_a_killed_worker_leaves_each_custom_id_exactly_once(stack: FaultStack, fault_api: ManagedProcess) -> None:
    stack.reset()
    client = openai.OpenAI(base_url=f"{fault_api.base_url}/v1", api_key="unused", timeout=60, max_retries=0)
    worker = start_worker(stack.env, queues=["bulk"])
    try:
        file_id = client.files.create(file=("faults.jsonl", requests_file(LINES, seed=7)), purpose="batch").id
        batch_id = client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h").id
        before = wait_until(
            lambda: client.batches.retrieve(batch_id).request_counts.completed,
            300,
            "the batch completed no request",
            until=lambda done: done >= 300,
            interval=0.1,
        )
        worker.kill()  # SIGKILL to the parent and its pool children at once
    finally:
        worker.stop()
    assert client.batches.retrieve(batch_id).status == "in_progress"

    worker = start_worker(stack.env, queues=["bulk"])
    try:
        batch = wait_until(
            lambda: client.batches.retrieve(batch_id),
            300,
            lambda b: f"the batch did not complete after the restart: {b}\n{worker.log_tail()}",
            until=lambda b: b.status in {"completed", "failed", "expired", "cancelled"},
            interval=0.5,
        )
    finally:
        worker.stop()
    assert batch.status == "completed", batch
    assert batch.request_counts.model_dump() == {"total": LINES, "completed": LINES, "failed": 0}
    custom_ids = [
        json.loads(line)["custom_id"] for line in client.files.content(batch.output_file_id).read().splitlines()
    ]
    assert sorted(custom_ids) == sorted(f"line-{i}" for i in range(LINES))  # each exactly once
    assert batch.error_file_id is None
    with stack.engine.connect() as conn:
        stored = conn.scalar(select(func.count()).select_from(BatchResult).where(BatchResult.batch_id == batch_id))
    assert stored == LINES
    print(f"\n[fault] batch worker killed at {before}/{LINES} requests completed; completed after a restart")
