"""Polling until something observable happens: one loop for every test that waits on a process, a job or a file."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

FINISHED = frozenset({"succeeded", "failed", "cancelled"})


def wait_until(
    probe: Callable[[], T],
    timeout: float,
    message: str | Callable[[T], object],
    *,
    until: Callable[[T], Any] = bool,
    interval: float = 0.2,
) -> T:
    """Return the first answer of ``probe`` that ``until`` accepts (truthy by default), asking every ``interval`` s.

    Past ``timeout`` s it fails with ``message``: a string, or a function of the last answer (to show it).
    """
    deadline = time.monotonic() + timeout
    while not until(answer := probe()):
        if time.monotonic() >= deadline:
            raise AssertionError(message(answer) if callable(message) else message)
        time.sleep(interval)
    return answer


def wait_job(
    client: httpx.Client,
    job_id: str,
    statuses: Collection[str] = FINISHED,
    timeout: float = 300,
    interval: float = 0.2,
) -> dict:
    """Return ``GET /jobs/{job_id}`` once the job's status is one of ``statuses`` (by default, finished)."""
    return wait_until(
        lambda: client.get(f"/jobs/{job_id}").json(),
        timeout,
        lambda job: f"job {job_id} did not reach {sorted(statuses)} in {timeout}s: {job}",
        until=lambda job: job["status"] in statuses,
        interval=interval,
    )
