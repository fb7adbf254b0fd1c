"""`embedq up`: embedded services, migrations, the API, a worker and Flower, under one supervisor."""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import NoReturn, TextIO

import httpx

from app.cli.devices import WORKER_APP, detect_gpus, pool_processes, up_job_workers
from app.cli.embedded import LOCALHOST, EmbeddedPostgres, EmbeddedRedis
from app.cli.migrations import upgrade_head
from app.cli.supervisor import ProcessSupervisor, RestartPolicy
from app.core.config import Settings, get_settings
from app.core.queues import Queue

log = logging.getLogger("embedq.up")

DATABASE_NAME = "embedq"
ALL_QUEUES = ",".join(queue.value for queue in Queue)
# Under the state dir: the children's states (read by /readyz), Flower's generated login.
CHILDREN_STATE_FILE = "up-children.json"
FLOWER_AUTH_FILE = "flower-auth"
FLOWER_USER = "admin"


class StateDirInUseError(RuntimeError):
    """Another `embedq up` is running on the same state directory."""


class FlowerAuthMissingError(RuntimeError):
    """Flower would start without basic auth outside dev."""


class _StopRequested(BaseException):
    """SIGINT or SIGTERM arrived; unwinds whatever `up` was doing into the shutdown path."""


@dataclass(frozen=True)
class UpOptions:
    """What `embedq up` was asked for on the command line."""

    state_dir: Path | None = None
    flower: bool = True
    concurrency: int | None = None
    stop_timeout: float = 30.0


@dataclass
class Supervisor:
    """Starts what `up` needs in order, keeps the children running, and stops it all in reverse."""

    settings: Settings
    options: UpOptions
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    servers: list[EmbeddedPostgres | EmbeddedRedis] = field(default_factory=list)
    processes: ProcessSupervisor = field(init=False)
    lock_file: TextIO | None = None

    def __post_init__(self) -> None:
        state_file = self.settings.state_dir / CHILDREN_STATE_FILE
        self.processes = ProcessSupervisor(RestartPolicy.from_settings(self.settings), state_file)
        # Every child learns where the supervisor writes their states: the API's /readyz reads it.
        self.env["EMBEDQ_SUPERVISOR_STATE_FILE"] = str(state_file)

    def lock_state_dir(self) -> None:
        """Hold a lock on the state directory until this process exits, or raise if another `up` holds it.

        Only then may `up` stop the embedded servers it finds already running: they are orphans of an
        `up` that died, not servers another `up` is using.
        """
        state_dir = self.settings.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.lock_file = (state_dir / "up.lock").open("a+")
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateDirInUseError(
                f"another `embedq up` is running on {state_dir}: stop it first, or pass another --state-dir"
            ) from None

    def start_services(self) -> tuple[str, str]:
        """Return (database_url, redis_url), starting embedded servers for the ones not configured."""
        database_url, redis_url = self.settings.database_url, self.settings.redis_url
        state_dir = self.settings.state_dir
        if database_url is None:
            postgres = EmbeddedPostgres(state_dir / "postgres", self.settings.embedded_pg_port)
            self.servers.append(postgres)
            postgres.start()
            database_url = postgres.ensure_database(DATABASE_NAME)
            log.info("embedded Postgres on port %s, data in %s", postgres.port, postgres.data_dir)
        if redis_url is None:
            valkey = EmbeddedRedis(state_dir / "redis", self.settings.embedded_redis_port)
            self.servers.append(valkey)
            valkey.start()
            redis_url = valkey.url()
            log.info("embedded Redis on port %s, data in %s", valkey.port, valkey.data_dir)
        self.env.update(EMBEDQ_DATABASE_URL=database_url, EMBEDQ_REDIS_URL=redis_url)
        return database_url, redis_url

    def spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> None:
        """Start ``args`` as a supervised child with the services' URLs (and ``extra_env``) in its environment."""
        self.processes.spawn(name, args, {**self.env, **(extra_env or {})})

    def spawn_children(self) -> None:
        """Start the job workers (one per GPU when there are several), the sync worker, beat, Flower and the API."""
        gpus = detect_gpus(self.env)
        concurrency = self.options.concurrency or pool_processes(
            self.settings.worker_concurrency, self.settings.device, gpus
        )
        celery = [sys.executable, "-m", "celery", "-A", WORKER_APP]
        for child in up_job_workers(gpus, concurrency, self.env):
            self.spawn(child.name, child.args, child.env)
        # As many sync workers as a job worker has pool processes, by the same rule (one per core on a CPU, one
        # on a GPU); each runs its own batcher and takes its share of the cores (workers/celery_app.py).
        sync_workers = pool_processes(self.settings.sync_worker_processes, self.settings.device, gpus)
        for i in range(sync_workers):
            name = "sync-worker" if sync_workers == 1 else f"sync-worker-{i + 1}"
            self.spawn(name, sync_worker_command(self.settings, i), {"EMBEDQ_SYNC_PROCESSES": str(sync_workers)})
        # Celery beat schedules the reaper (docs "Reliability"); one beat per deployment, hence not `-B`.
        self.spawn(
            "beat",
            [*celery, "beat", "--schedule", str(self.settings.state_dir / "celerybeat-schedule"), "--loglevel", "INFO"],
        )
        if self.options.flower:
            # Flower hands these to tornado, which only understands the --name=value form.
            self.spawn(
                "flower",
                [*celery, "flower", f"--port={self.settings.flower_port}", f"--address={LOCALHOST}"],
                flower_env(self.settings),
            )
        self.spawn("api", api_command(self.settings))

    def watch(self) -> NoReturn:
        """Keep the children running until a signal stops `up`; print the banner once the API (and Flower) answer."""
        announced = False
        while True:
            self.processes.tend()
            if not announced and _ready(self.settings, self.options, self.processes):
                print(banner(self.settings, self.options), flush=True)
                announced = True
            time.sleep(0.5)

    def stop_all(self) -> None:
        """Stop the children (SIGTERM, then SIGKILL after the timeout), then the embedded servers."""
        self.processes.stop_all(self.options.stop_timeout)
        for server in reversed(self.servers):
            server.stop()
        log.info("everything stopped")


def sync_worker_command(settings: Settings, index: int = 0) -> list[str]:
    """Return the command of the worker for synchronous requests (README "Synchronous API").

    The solo pool, not prefork: the sync task only queues its request on the process's batcher and returns
    (workers/tasks/infer.py), so the consumer hands each message over with no thread in between, and requests
    that wait together run in one forward pass. A queue of its own, so no job batch holds them up. ``index``
    tells the node names of several sync workers apart: sync@host, sync2@host, ...
    """
    return [
        sys.executable, "-m", "celery", "-A", WORKER_APP, "worker", "-Q", settings.sync_queue,
        "--pool", "solo", "--loglevel", "INFO", "-n", "sync@%h" if index == 0 else f"sync{index + 1}@%h",
    ]  # fmt: skip


def api_command(settings: Settings) -> list[str]:
    """Return the API server's command: uvicorn with the slow-client deadlines and limits of the settings."""
    return [
        sys.executable, "-m", "uvicorn", "app.main:app",
        "--host", settings.api_host, "--port", str(settings.api_port),
        "--http", "app.main:HttpProtocol",
        "--timeout-keep-alive", f"{settings.api_keep_alive_timeout_s:g}",
        "--limit-concurrency", str(settings.api_limit_concurrency),
    ]  # fmt: skip


def flower_env(settings: Settings) -> dict[str, str]:
    """Return the environment giving Flower its basic auth (in the environment, so `ps` does not show it).

    Flower shows task arguments (tenants' texts) and can revoke tasks, so it gets a login whenever the API
    asks for keys: EMBEDQ_FLOWER_BASIC_AUTH, else one generated once into the state dir (see
    ``flower_login``). Outside dev, Flower without credentials is refused.
    """
    if settings.flower_basic_auth:
        return {"FLOWER_BASIC_AUTH": ",".join(settings.flower_basic_auth)}
    if settings.environment == "prod":
        raise FlowerAuthMissingError(
            "Flower needs basic auth outside dev: set EMBEDQ_FLOWER_BASIC_AUTH=user:password "
            "(or pass --flower-basic-auth), or run with --no-flower"
        )
    if not settings.auth_disabled:
        return {"FLOWER_BASIC_AUTH": flower_login(settings)}
    log.warning("Flower has no basic auth: anyone who reaches port %d sees every task", settings.flower_port)
    return {}


def flower_login(settings: Settings) -> str:
    """Return ``user:password`` for Flower from the state dir, generating and printing it the first time."""
    path = settings.state_dir / FLOWER_AUTH_FILE
    if path.exists():
        return path.read_text().strip()
    login = f"{FLOWER_USER}:{secrets.token_urlsafe(18)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(login + "\n")
    print(f"Flower login (generated once, kept in {path}): {login}", flush=True)
    return login


def _browsable_host(host: str) -> str:
    """Return a host a browser can open for a server bound to ``host``."""
    return LOCALHOST if host in ("0.0.0.0", "::", "") else host


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=1.0).status_code
    except httpx.HTTPError:
        return None


def _ready(settings: Settings, options: UpOptions, processes: ProcessSupervisor) -> bool:
    """Return True once the API is healthy and, when `up` runs Flower, Flower answers or was given up on."""
    if _status(f"{api_url(settings)}/healthz") != 200:
        return False
    if not options.flower or processes.is_down("flower"):
        return True
    # With basic auth Flower answers 401: it is up all the same.
    return _status(f"{flower_url(settings)}/healthcheck") in (200, 401)


def api_url(settings: Settings) -> str:
    """Return the API's base URL as a browser on this machine opens it."""
    return f"http://{_browsable_host(settings.api_host)}:{settings.api_port}"


def flower_url(settings: Settings) -> str:
    """Return Flower's URL (`up` binds it to the loopback address)."""
    return f"http://{LOCALHOST}:{settings.flower_port}"


def banner(settings: Settings, options: UpOptions) -> str:
    """Return the lines `up` prints once everything answers: the dashboard, the API, its docs and Flower."""
    api = api_url(settings)
    lines = ["", "embedq is up", f"  UI      {api}/ui", f"  API     {api}", f"  Docs    {api}/docs"]
    if options.flower:
        lines.append(f"  Flower  {flower_url(settings)}")
        if not (settings.auth_disabled or settings.flower_basic_auth):
            lines.append(f"          Flower's login is in {settings.state_dir / FLOWER_AUTH_FILE}")
    lines.append(f"  State   {settings.state_dir}")
    if settings.auth_disabled:
        lines.append("  Auth    OFF (EMBEDQ_AUTH_DISABLED=true): anyone who reaches the API is an admin")
    lines += ["Press Ctrl-C to stop.", ""]
    return "\n".join(lines)


def _raise_stop(signum: int, _: FrameType | None) -> None:
    raise _StopRequested(signal.Signals(signum).name)


def _ignore_repeat(signum: int, _: FrameType | None) -> None:
    log.warning("%s received; already stopping, please wait", signal.Signals(signum).name)


def run_up(options: UpOptions) -> int:
    """Return the exit code of an `embedq up` session once a signal stopped it: 0."""
    if options.state_dir is not None:
        os.environ["EMBEDQ_STATE_DIR"] = str(options.state_dir.resolve())
        get_settings.cache_clear()
    supervisor = Supervisor(get_settings(), options)
    if options.flower:
        flower_env(supervisor.settings)  # refuse before starting anything
    supervisor.lock_state_dir()
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _raise_stop)
        database_url, _ = supervisor.start_services()
        upgrade_head(database_url)
        supervisor.spawn_children()
        supervisor.watch()
    except _StopRequested as stop:
        log.info("%s received; stopping", stop)
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _ignore_repeat)
        supervisor.stop_all()
