"""A sync worker stopped (SIGTERM) while it holds requests answers them before it exits; none is lost.

The sync task returns as soon as its request is queued on the worker's batcher (workers/tasks/infer.py),
so Celery's warm shutdown has no running task to wait for: the worker itself waits for the replies it owes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from support.processes import ManagedProcess, start_api
from support.sync_stack import start_sync_worker, sync_queue_env
from support.texts import SENTENCES
from support.waiting import wait_until

pytestmark = pytest.mark.e2e

REQUESTS = 12


@pytest.fixture(scope="module")
def env(service_env: dict[str, str]) -> dict[str, str]:
    return sync_queue_env(service_env, "stop", EMBEDQ_SYNC_TIMEOUT_S="120")


@pytest.fixture(scope="module")
def api(env: dict[str, str]) -> Iterator[ManagedProcess]:
    process = start_api(env)
    yield process
    process.stop()


def test_a_stopped_sync_worker_answers_what_it_holds_and_the_rest_waits_for_the_next(
    env: dict[str, str], api: ManagedProcess
) -> None:
    first = start_sync_worker(env, pool="solo")
    # Long inputs: the worker holds several seconds of forward passes when it is told to stop.
    texts = [" ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(12)) for i in range(48)]

    def ask(i: int) -> httpx.Response:
        with httpx.Client(base_url=api.base_url, timeout=180) as client:
            return client.post("/v1/embeddings", json={"input": texts, "user": f"caller-{i}"})

    with ThreadPoolExecutor(REQUESTS) as pool:
        answers = [pool.submit(ask, i) for i in range(REQUESTS)]
        # The requests are sent; the worker has taken the first of them.
        wait_until(lambda: "Task inference.run[" in first.log_text(), 60, lambda _: first.log_tail(), interval=0.1)
        stopped = time.monotonic()
        assert first.stop(timeout=150) == 0
        stop_s = time.monotonic() - stopped
        answered_by_first = sum(1 for a in answers if a.done())
        # Whatever the first worker had not taken is still in Redis, for the next worker.
        second = start_sync_worker(env, pool="solo")
        try:
            responses = [a.result(timeout=180) for a in answers]
        finally:
            second.stop()
    assert [r.status_code for r in responses] == [200] * REQUESTS, [r.text[:200] for r in responses]
    assert all(len(r.json()["data"]) == len(texts) for r in responses)
    assert answered_by_first >= 1, f"the first worker answered nothing in its {stop_s:.1f} s of shutdown"
    assert "were not answered before shutdown" not in first.log_text()
