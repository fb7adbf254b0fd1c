"""A small fleet on one machine for race tests: two API processes and two workers of several pool processes each.

Everything runs on a Postgres and a Redis of the fleet's own (``support.faults.fault_stack``), so no other
test's worker takes its tasks and its workers take no one else's. Batches are two inputs or two documents,
so a job of a few dozen is many batches finishing together, and the model is a tiny random BERT, so a batch
costs milliseconds and the batches do finish together.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.core.queues import Queue
from app.keys.service import create_key
from support.faults import FaultStack, fault_stack
from support.processes import ManagedProcess, start_api, start_worker
from support.tiny_models import make_tiny_bert
from support.waiting import FINISHED, wait_until

T = TypeVar("T")

MODEL = "acme/tiny-fleet"
POOL_PROCESSES = 2
WORKERS = 2
APIS = 2
# Every queue a fleet's job workers share; sync and training have workers of their own.
JOB_QUEUES = (Queue.INFERENCE, Queue.BULK, Queue.WEBHOOKS, Queue.MAINTENANCE)
FLEET_ENV = {
    "EMBEDQ_JOB_BATCH_SIZE": "2",
    "EMBEDQ_ENCODE_BATCH_SIZE": "2",
    "EMBEDQ_INGEST_BATCH_DOCUMENTS": "2",
    "EMBEDQ_AUTH_DISABLED": "false",
}


@dataclass
class Fleet:
    """The fleet's processes, its database, and an admin key of the tenant ``default``."""

    stack: FaultStack
    apis: list[ManagedProcess]
    workers: list[ManagedProcess]
    admin_key: str

    def client(self, key: str | None = None, api: int = 0) -> httpx.Client:
        """Return a client of API process ``api`` (modulo their number) calling with ``key`` (the admin's)."""
        base_url = self.apis[api % len(self.apis)].base_url
        assert base_url is not None
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=base_url, headers=headers, timeout=120)

    def new_key(self, max_concurrent_jobs: int | None = None) -> str:
        """Return a new stored key of a tenant of its own, with its own limit of queued+running jobs."""
        with Session(self.stack.engine) as session:
            _, raw = create_key(
                session, tenant=f"fleet-{secrets.token_hex(4)}", max_concurrent_jobs=max_concurrent_jobs
            )
            session.commit()
        return raw

    def scalar(self, sql: str, **params: Any) -> Any:
        """Return the one value ``sql`` selects."""
        with self.stack.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar_one()

    def rows(self, sql: str, **params: Any) -> list[Any]:
        """Return the rows ``sql`` selects."""
        with self.stack.engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    def queued_or_held(self) -> int:
        """Return the task messages still waiting in a job queue or held by a worker (delivered, not acked)."""
        client = self.stack.redis_client()
        try:
            waiting = sum(
                client.llen(key)
                for queue in JOB_QUEUES
                for key in client.scan_iter(match=f"{queue.value}*")
                if client.type(key) == b"list"
            )
            return waiting + int(client.hlen("unacked"))
        finally:
            client.close()

    def wait_quiet(self, timeout: float = 60) -> None:
        """Return once no task message is left: every batch and every webhook delivery has run."""
        wait_until(
            self.queued_or_held,
            timeout,
            lambda left: f"{left} task messages still queued or held after {timeout:.0f}s",
            until=lambda left: left == 0,
        )

    def postgres_log_size(self) -> int:
        """Return how many bytes the fleet's Postgres has logged so far (an offset for ``deadlocks``)."""
        return self.stack.postgres.log_path.stat().st_size

    def deadlocks(self, since: int = 0) -> list[str]:
        """Return the deadlocks Postgres reported after byte ``since`` of its log, each with its detail.

        A job task retries after one, so a deadlock between workers shows nowhere else: only as lost seconds.
        """
        with self.stack.postgres.log_path.open(errors="replace") as log:
            log.seek(since)
            lines = log.read().splitlines()
        return ["\n".join(lines[i : i + 5]) for i, line in enumerate(lines) if "deadlock detected" in line]

    def alive(self) -> None:
        """Fail unless every process of the fleet still runs."""
        for process in (*self.apis, *self.workers):
            assert process.alive(), f"{process.name} died:\n{process.log_tail()}"

    def wait_jobs(self, job_ids: Sequence[str], timeout: float = 120) -> dict[str, str]:
        """Return each job's status once every one has finished."""
        ids = [uuid.UUID(j) for j in job_ids]

        def statuses() -> dict[str, str]:
            rows = self.rows("SELECT id, status FROM jobs WHERE id = ANY(:ids)", ids=ids)
            return {str(job_id): status for job_id, status in rows}

        return wait_until(
            statuses,
            timeout,
            lambda now: f"jobs not finished in {timeout:.0f}s: {now}",
            until=lambda now: len(now) == len(ids) and set(now.values()) <= FINISHED,
        )


@contextmanager
def fleet(service_env: Mapping[str, str], models_dir: Path) -> Iterator[Fleet]:
    """Yield a fleet on a fresh Postgres and Redis, with the tiny model in ``models_dir``; stopped afterwards."""
    folder = models_dir / MODEL
    if not folder.exists():
        make_tiny_bert(folder)
    admin_key = f"fleet-admin-{secrets.token_hex(16)}"
    with fault_stack(service_env) as stack, ExitStack() as processes:
        env = {**stack.env, **FLEET_ENV, "EMBEDQ_API_KEYS": admin_key, "EMBEDQ_MODELS_DIR": str(models_dir)}
        workers = []
        for _ in range(WORKERS):
            worker = start_worker(env, queues=JOB_QUEUES, concurrency=POOL_PROCESSES)
            processes.callback(worker.stop)
            workers.append(worker)
        apis = []
        for _ in range(APIS):
            api = start_api(env)
            processes.callback(api.stop)
            apis.append(api)
        yield Fleet(stack, apis, workers, admin_key)


def at_once(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Return what each call gave, all of them started together on threads of their own (behind one barrier)."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))
