"""Postgres and Redis for one test session: the ones named by EMBEDQ_TEST_* URLs, else embedded ones."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import create_engine, make_url, pool, text

from app.cli.embedded import EmbeddedPostgres, EmbeddedRedis, find_free_port
from app.cli.migrations import upgrade_head
from app.core.config import Settings

LOCAL_REDIS = "redis://127.0.0.1:6379"
# Databases of a shared local Redis that test sessions may claim, one session each.
CLAIMABLE_REDIS_DBS = range(11, 16)
CLAIM_KEY = "embedq:test-session"
# Long enough for a full run; a crashed session's claim lapses on its own.
CLAIM_TTL_S = 4 * 3600
# Celery's routing tables (kombu's binding sets and their bookkeeping): deleting them would unbind the
# queues of workers already running, and tasks sent to an unbound queue are dropped.
KOMBU_BINDINGS = "_kombu.binding*"


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """Yield a fresh directory under the system temp dir, removed afterwards.

    Not under pytest's basetemp: pytest resets ``/tmp/pytest-of-<user>`` to mode 700 whenever a session
    starts, which would lock the unprivileged Postgres user out of a concurrent session's data dir.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def session_database() -> Iterator[str]:
    """Yield the URL of a fresh, migrated database ``embedq_test_<random>``, gone afterwards."""
    name = f"embedq_test_{secrets.token_hex(4)}"
    server_url = os.environ.get("EMBEDQ_TEST_DATABASE_URL")
    if server_url:
        with _database_on(server_url, name) as url:
            upgrade_head(url)
            yield url
        return
    with scratch_dir("embedq-test-pg-") as workdir:
        postgres = EmbeddedPostgres(workdir / "postgres", find_free_port())
        postgres.start()
        try:
            url = postgres.ensure_database(name)
            upgrade_head(url)
            yield url
        finally:
            postgres.stop()


@contextmanager
def _database_on(server_url: str, name: str) -> Iterator[str]:
    """Yield the URL of database ``name``, created on the server of ``server_url`` and dropped afterwards."""
    admin_url = Settings(database_url=server_url).database_url
    assert admin_url is not None
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class SessionRedis:
    """The Redis database of this test session."""

    url: str
    claim_token: str | None = None

    def client(self) -> redis.Redis:
        """Return a client of the test database."""
        return redis.Redis.from_url(self.url)

    def reset(self) -> None:
        """Delete every key but Celery's routing tables (and this session's claim on the database)."""
        client = self.client()
        try:
            bindings = set(client.scan_iter(match=KOMBU_BINDINGS, count=1000))
            doomed = [key for key in client.scan_iter(count=1000) if key not in bindings]
            if self.claim_token is not None:
                doomed = [key for key in doomed if key != CLAIM_KEY.encode()]
            if doomed:
                client.delete(*doomed)
        finally:
            client.close()


@contextmanager
def session_redis() -> Iterator[SessionRedis]:
    """Yield this session's Redis: EMBEDQ_TEST_REDIS_URL, a claimed db of a local Redis, or an embedded one."""
    url = os.environ.get("EMBEDQ_TEST_REDIS_URL")
    if url:
        yield SessionRedis(url)
        return
    with _claimed_local_db() as claimed:
        if claimed is not None:
            yield claimed
            return
    with scratch_dir("embedq-test-redis-") as workdir:
        valkey = EmbeddedRedis(workdir / "redis", find_free_port())
        valkey.start()
        try:
            yield SessionRedis(valkey.url())
        finally:
            valkey.stop()


def _claim_local_db(token: str) -> int | None:
    """Return a database of the local Redis now claimed with ``token``, or None if none answers or all are taken.

    Sessions sharing one database would flush each other's queues and run each other's tasks against the
    wrong Postgres database, so each claims its own with a key that expires should the session die.
    """
    for db in CLAIMABLE_REDIS_DBS:
        client = _no_retry_client(f"{LOCAL_REDIS}/{db}")
        try:
            if client.set(CLAIM_KEY, token, nx=True, ex=CLAIM_TTL_S):
                return db
        except redis.ConnectionError:
            return None
        finally:
            client.close()
    return None


@contextmanager
def _claimed_local_db() -> Iterator[SessionRedis | None]:
    """Yield a claimed database of the local Redis, emptied (claim and all) afterwards; None if there is none."""
    token = secrets.token_hex(8)
    db = _claim_local_db(token)
    if db is None:
        yield None
        return
    claimed = SessionRedis(f"{LOCAL_REDIS}/{db}", claim_token=token)
    try:
        yield claimed
    finally:
        client = claimed.client()
        try:
            if client.get(CLAIM_KEY) == token.encode():
                client.flushdb()
        finally:
            client.close()


def _no_retry_client(url: str) -> redis.Redis:
    # A refused connection means "no local Redis"; redis-py's default retries would only add seconds.
    return redis.Redis.from_url(url, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
