"""Real embedq processes for end-to-end tests: a Celery worker and the API, each logging to its own file."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from celery import Celery

from app.cli.embedded import LOCALHOST, find_free_port
from app.cli.up import WORKER_APP
from app.core.queues import Queue
from support.paths import REPO_ROOT

EMBEDQ = Path(sys.executable).with_name("embedq")
WORKER_START_TIMEOUT_S = 120.0
API_START_TIMEOUT_S = 60.0


@dataclass
class ManagedProcess:
    """A child process alone in its process group, with its output in ``log_path``."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    base_url: str | None = None
    nodename: str | None = None

    @property
    def pid(self) -> int:
        """Return the process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Return whether the process is still running."""
        return self.popen.poll() is None

    def log_text(self) -> str:
        """Return everything the process has written so far."""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        """Return the last ``lines`` lines of the log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int:
        """Return the exit code after SIGTERM, escalating to SIGKILL of the group after ``timeout`` seconds."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        self._kill_group()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL the process and everything in its group, as a crash would."""
        self._kill_group()

    def _kill_group(self) -> None:
        # Also reaps pool children a killed worker leaves behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()


def _spawn(name: str, args: list[str], env: Mapping[str, str]) -> ManagedProcess:
    """Start ``args`` from the repository root with ``env`` laid over this process's environment."""
    merged = {**os.environ, **env}
    log_dir = Path(merged.get("EMBEDQ_STATE_DIR") or tempfile.gettempdir()) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{secrets.token_hex(3)}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env=merged,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ManagedProcess(name, popen, log_path)


def _startup_failed(process: ManagedProcess, why: str) -> RuntimeError:
    process.stop(timeout=5)
    return RuntimeError(f"{process.name} {why}; its log {process.log_path} ends with:\n{process.log_tail()}")


def start_worker(
    env: Mapping[str, str],
    queues: Iterable[str] = tuple(Queue),
    concurrency: int = 1,
    timeout: float = WORKER_START_TIMEOUT_S,
    pool: str | None = None,
    app: str = WORKER_APP,
) -> ManagedProcess:
    """Return a running Celery worker consuming ``queues`` (``pool``: Celery's -P, e.g. "threads"), once it answers.

    ``app``: another Celery app to run, e.g. "support.sleepy_app:app" (``tests`` is put on its PYTHONPATH).
    """
    nodename = f"test-{secrets.token_hex(4)}@{socket.gethostname()}"
    if app != WORKER_APP:
        env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT / "tests"), env.get("PYTHONPATH")]))}
    args = [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "-Q", ",".join(str(q) for q in queues), "--concurrency", str(concurrency),
        "-E", "--loglevel", "INFO", "-n", nodename,
        # Neither is needed by one worker, and mingle alone adds a second to every start.
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip
    if pool is not None:
        args += ["--pool", pool]
    process = _spawn("worker", args, env)
    process.nodename = nodename
    control = Celery("embedq-tests", broker={**os.environ, **env}["EMBEDQ_REDIS_URL"])
    deadline = time.monotonic() + timeout
    try:
        while not control.control.ping(destination=[nodename], timeout=1.0):
            if not process.alive():
                raise _startup_failed(process, f"exited with code {process.popen.returncode} before answering")
            if time.monotonic() > deadline:
                raise _startup_failed(process, f"did not answer a ping within {timeout:.0f}s")
    finally:
        control.close()
    return process


def start_beat(env: Mapping[str, str]) -> ManagedProcess:
    """Return a celery beat process sending the periodic tasks (its schedule file in EMBEDQ_STATE_DIR)."""
    state_dir = Path({**os.environ, **env}.get("EMBEDQ_STATE_DIR") or tempfile.gettempdir())
    schedule = state_dir / f"celerybeat-schedule-{secrets.token_hex(3)}"
    args = [sys.executable, "-m", "celery", "-A", WORKER_APP, "beat", "--schedule", str(schedule), "-l", "INFO"]
    return _spawn("beat", args, env)


def start_api(env: Mapping[str, str], timeout: float = API_START_TIMEOUT_S) -> ManagedProcess:
    """Return a running API on a free port (see ``.base_url``), once GET /healthz answers 200.

    Started as deployments start it, `embedq api`: uvicorn with the settings' deadlines and limits.
    """
    port = find_free_port()
    process = _spawn("api", [str(EMBEDQ), "api"], {**env, "EMBEDQ_API_HOST": LOCALHOST, "EMBEDQ_API_PORT": str(port)})
    process.base_url = f"http://{LOCALHOST}:{port}"
    deadline = time.monotonic() + timeout
    while not _answers_healthz(process.base_url):
        if not process.alive():
            raise _startup_failed(process, f"exited with code {process.popen.returncode} before answering")
        if time.monotonic() > deadline:
            raise _startup_failed(process, f"did not answer GET /healthz within {timeout:.0f}s")
        time.sleep(0.2)
    return process


def _answers_healthz(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
