"""A Postgres and a Redis of the fault tests' own, so killing and restarting them disturbs no other test."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import redis
from sqlalchemy import Engine, create_engine, func, inspect, pool, select, text

import app.models  # noqa: F401  (registers every table on Base.metadata)
from app.cli.embedded import EmbeddedPostgres, EmbeddedRedis, find_free_port
from app.cli.migrations import upgrade_head
from app.core.db import Base
from app.maintenance.broker import task_call
from app.models.job import Job, JobResult
from support.services import scratch_dir
from support.waiting import FINISHED, wait_until

# Small batches, so a few hundred inputs make a multi-batch job with batches in flight at any moment.
FAULT_ENV = {"EMBEDQ_JOB_BATCH_SIZE": "16", "EMBEDQ_ENCODE_BATCH_SIZE": "16"}


@dataclass
class FaultStack:
    """Postgres and Redis servers the fault tests may stop, and the environment pointing processes at them."""

    postgres: EmbeddedPostgres
    redis: EmbeddedRedis
    database_url: str
    env: dict[str, str]
    engine: Engine

    def redis_client(self) -> redis.Redis:
        """Return a client that gives up at once when Redis is down."""
        return redis.Redis.from_url(self.redis.url(), socket_connect_timeout=2, socket_timeout=5)

    def reset(self) -> None:
        """Empty every table and the Redis database (call with no process of the stack running)."""
        # Only migrated tables: a model whose migration is still being written has none yet.
        existing = set(inspect(self.engine).get_table_names()) - {"alembic_version"}
        names = ", ".join(t.name for t in Base.metadata.sorted_tables if t.name in existing)
        with self.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        client = self.redis_client()
        try:
            client.flushdb()
        finally:
            client.close()

    def counts(self, job_id: str) -> dict[str, Any]:
        """Return what Postgres holds for a job: its row's status and counts, and its stored vectors."""
        with self.engine.connect() as conn:
            job = conn.execute(select(Job.status, Job.done, Job.failed, Job.total).where(Job.id == job_id)).one()
            rows = conn.execute(
                select(func.count(), func.count(JobResult.embedding), func.count(JobResult.error)).where(
                    JobResult.job_id == uuid.UUID(job_id)
                )
            ).one()
        return {
            "status": job.status,
            "done": job.done,
            "failed": job.failed,
            "total": job.total,
            "rows": rows[0],
            "vectors": rows[1],
            "errors": rows[2],
        }

    def done(self, job_id: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(Job.done).where(Job.id == job_id)).scalar_one()

    def wait_done_at_least(self, job_id: str, n: int, timeout: float = 300) -> int:
        """Return the job's done count once it reaches ``n``; fail after ``timeout`` seconds."""
        return wait_until(
            lambda: self.done(job_id),
            timeout,
            lambda done: f"job {job_id} reached only {done} of {n} in {timeout:.0f}s",
            until=lambda done: done >= n,
            interval=0.1,
        )

    def wait_terminal(self, job_id: str, timeout: float = 300) -> dict[str, Any]:
        """Return the job's counts once it has finished; fail after ``timeout`` seconds."""
        return wait_until(
            lambda: self.counts(job_id),
            timeout,
            lambda counts: f"job {job_id} did not finish in {timeout:.0f}s: {counts}",
            until=lambda counts: counts["status"] in FINISHED,
        )

    def unacked(self) -> int:
        """Return how many messages wait in Redis for an ack (delivered to a worker, not finished)."""
        return len(self.held_batches())

    def held_batches(self) -> list[list[int]]:
        """Return the input indices of the ``embed.batch`` messages delivered to a worker and not acked yet."""
        client = self.redis_client()
        try:
            raw = client.hvals("unacked")
        finally:
            client.close()
        calls = [task_call(json.loads(value)[0]) for value in raw]
        return sorted(sorted(args[1]) for name, args in filter(None, calls) if name == "embed.batch")

    def embedded(self, job_id: str, idxs: list[int]) -> bool:
        """Return whether every input at ``idxs`` of the job has its vector."""
        with self.engine.connect() as conn:
            missing = conn.execute(
                select(func.count()).where(
                    JobResult.job_id == uuid.UUID(job_id),
                    JobResult.idx.in_(idxs),
                    JobResult.embedding.is_(None),
                )
            ).scalar_one()
        return missing == 0

    def wait_embedded(self, job_id: str, batches: list[list[int]], timeout: float) -> float:
        """Return the seconds until every batch in ``batches`` has its vectors; fail after ``timeout``."""
        started = time.monotonic()
        wait_until(
            lambda: all(self.embedded(job_id, idxs) for idxs in batches),
            timeout,
            f"batches {batches} not embedded within {timeout:.0f}s",
        )
        return time.monotonic() - started


def exactly_once(counts: Mapping[str, Any], total: int) -> bool:
    """Return whether a job succeeded with one vector per input: none missing, none counted twice."""
    return dict(counts) == {
        "status": "succeeded",
        "done": total,
        "failed": 0,
        "total": total,
        "rows": total,
        "vectors": total,
        "errors": 0,
    }


@contextmanager
def fault_stack(base_env: Mapping[str, str]) -> Iterator[FaultStack]:
    """Yield fresh Postgres (migrated) and Redis servers in a scratch directory, stopped afterwards."""
    with scratch_dir("embedq-faults-") as workdir:
        postgres = EmbeddedPostgres(workdir / "postgres", find_free_port())
        valkey = EmbeddedRedis(workdir / "redis", find_free_port())
        postgres.start()
        try:
            valkey.start()
            database_url = postgres.ensure_database("embedq_faults")
            upgrade_head(database_url)
            env = {
                **base_env,
                **FAULT_ENV,
                # Process logs next to the servers' (pytest's temp dirs may be pruned by concurrent sessions).
                "EMBEDQ_STATE_DIR": str(workdir / "state"),
                "EMBEDQ_DATABASE_URL": database_url,
                "EMBEDQ_REDIS_URL": valkey.url(),
            }
            engine = create_engine(database_url, poolclass=pool.NullPool)
            try:
                yield FaultStack(postgres, valkey, database_url, env, engine)
            finally:
                engine.dispose()
        finally:
            valkey.stop()
            postgres.stop()


def submit(api_url: str, texts: list[str], **fields: Any) -> str:
    """Return the id of a new embedding job posted to the API at ``api_url``."""
    response = httpx.post(f"{api_url}/jobs/embeddings", json={"input": texts, **fields}, timeout=30)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])
