"""Fixtures for every test: the session's Postgres and Redis, a rolled-back DB session, clean state, real processes.

Before the first test the session points EMBEDQ_DATABASE_URL and EMBEDQ_REDIS_URL at services of its own
(see ``support.services``), so nothing a developer exported can reach a real database. Helpers import as
``support.*``: tests/ is not a package.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session
from support.processes import ManagedProcess, start_api, start_worker
from support.s3 import S3Server, seaweed_s3
from support.services import SessionRedis, scratch_dir, session_database, session_redis
from support.settings import SettingsEnv
from support.up import Ports

import app.models  # noqa: F401  (registers every table on Base.metadata)
from app.cli.embedded import EmbeddedPostgres, EmbeddedRedis, find_free_port
from app.core.config import get_settings
from app.core.db import Base

# Tests run in test mode and never reach the network for models, whatever the shell exported.
OFFLINE_TEST_ENV = {
    "EMBEDQ_ENVIRONMENT": "test",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    # The suite compares vectors with sentence-transformers' fp32 ones, so auto stays fp32 on the CPU here;
    # tests/runtime/test_auto_precision.py turns the measured choice on and tests it.
    "EMBEDQ_PRECISION_AUTO_MEASURE": "false",
}
# Fixtures that start real processes; tests using them are marked e2e.
PROCESS_FIXTURES = frozenset({"worker", "api"})


def pytest_configure(config: pytest.Config) -> None:
    # Before collection imports any test module (some import huggingface_hub, which reads these once).
    os.environ.update(OFFLINE_TEST_ENV)
    get_settings.cache_clear()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.e2e)
    # The session's worker lives until the session ends: run its tests last, so it never consumes the
    # tasks that worker-less tests expect to find waiting in the queue.
    items.sort(key=lambda item: bool(PROCESS_FIXTURES & set(item.fixturenames)))


@dataclass(frozen=True)
class SessionServices:
    """The services of this test session and the environment that points processes at them."""

    database_url: str
    redis: SessionRedis
    env: dict[str, str]


@pytest.fixture(scope="session", autouse=True)
def session_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionServices]:
    """Start (or pick) the session's Postgres and Redis and export their URLs to this process."""
    state_dir = tmp_path_factory.mktemp("state")
    models_dir = state_dir / "models"
    models_dir.mkdir()
    with ExitStack() as stack:
        database_url = stack.enter_context(session_database())
        session_redis_db = stack.enter_context(session_redis())
        env = {
            **OFFLINE_TEST_ENV,
            "EMBEDQ_DATABASE_URL": database_url,
            "EMBEDQ_REDIS_URL": session_redis_db.url,
            "EMBEDQ_STATE_DIR": str(state_dir),
            "EMBEDQ_MODELS_DIR": str(models_dir),
            # Webhook receivers in tests listen on 127.0.0.1, and retries must come within a test's patience.
            "EMBEDQ_WEBHOOK_ALLOWED_CIDRS": "127.0.0.1/32",
            "EMBEDQ_WEBHOOK_RETRY_SCHEDULE_S": "0.5,0.5,0.5",
            # Auth is off unless a test turns it on (tests of keys and tenants set EMBEDQ_AUTH_DISABLED=false).
            "EMBEDQ_AUTH_DISABLED": "true",
            # Parallel test runs would contend for one port; tests that read worker metrics pick a free one.
            "EMBEDQ_WORKER_METRICS_PORT": "0",
            # A fine-tune without epochs trains one epoch to its end, so tests that train the real MiniLM stay
            # short; the tests of the defaults and of early stopping set them themselves.
            "EMBEDQ_TRAINING_DEFAULT_MIN_STEPS": "1",
            "EMBEDQ_TRAINING_EARLY_STOPPING_PATIENCE": "0",
        }
        os.environ.update(env)
        get_settings.cache_clear()
        yield SessionServices(database_url, session_redis_db, env)
        get_settings.cache_clear()


@pytest.fixture
def settings_env() -> Iterator[SettingsEnv]:
    """Yield a ``SettingsEnv``; ``get_settings`` re-reads the environment before the test and, restored, after it."""
    get_settings.cache_clear()
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield SettingsEnv(monkeypatch)
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def service_env(session_services: SessionServices) -> dict[str, str]:
    """Return the environment variables to give a subprocess so it uses this session's services."""
    return dict(session_services.env)


@pytest.fixture(scope="session")
def db_engine(session_services: SessionServices) -> Iterator[Engine]:
    """Yield an engine on the session's test database."""
    engine = create_engine(session_services.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_session(db_engine: Engine) -> Iterator[Session]:
    """Yield a session whose every change, commits included, is rolled back when the test ends."""
    with db_engine.connect() as connection:
        transaction = connection.begin()
        # The session's commits only release savepoints inside the outer transaction.
        session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield session
        finally:
            session.close()
            transaction.rollback()


@pytest.fixture
def scope(db_session: Session):
    """A session scope for worker-side code run in-process: it hands out ``db_session`` and flushes after."""

    @contextmanager
    def _scope() -> Iterator[Session]:
        yield db_session
        db_session.flush()

    return _scope


def _empty_state(engine: Engine, session_redis_db: SessionRedis) -> None:
    tables = [table for table in Base.metadata.sorted_tables if table.name != "alembic_version"]
    if tables:
        names = ", ".join(engine.dialect.identifier_preparer.format_table(table) for table in tables)
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    session_redis_db.reset()


@pytest.fixture
def clean_state(session_services: SessionServices, db_engine: Engine) -> Iterator[None]:
    """Empty every table and the test Redis before and after the test (for tests that commit for real)."""
    _empty_state(db_engine, session_services.redis)
    yield
    _empty_state(db_engine, session_services.redis)


@pytest.fixture
def redis_client(session_services: SessionServices) -> Iterator[redis.Redis]:
    """Yield a client of the session's Redis database."""
    client = session_services.redis.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def worker(service_env: dict[str, str]) -> Iterator[ManagedProcess]:
    """Yield a Celery worker process on every queue, started the first time a test asks for it."""
    process = start_worker(service_env)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def api(service_env: dict[str, str]) -> Iterator[ManagedProcess]:
    """Yield an API process (see ``api.base_url``), started the first time a test asks for it."""
    process = start_api(service_env)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """Yield a real S3-compatible server (SeaweedFS), started the first time a test asks for it."""
    with scratch_dir("embedq-test-s3-") as data_dir, seaweed_s3(data_dir) as server:
        yield server


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """Yield a fresh state directory for an `embedq up` (see ``support.up``)."""
    with scratch_dir("embedq-test-up-") as path:
        yield path


@pytest.fixture
def ports(state_dir: Path) -> Iterator[Ports]:
    """Yield free ports for an `embedq up`; stop whatever servers it left on them."""
    chosen = Ports(find_free_port(), find_free_port(), find_free_port(), find_free_port())
    yield chosen
    # Whatever happened to `up`, leave no server behind.
    EmbeddedPostgres(state_dir / "postgres", chosen.postgres).stop()
    EmbeddedRedis(state_dir / "redis", chosen.redis).stop()
