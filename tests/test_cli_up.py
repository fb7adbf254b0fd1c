"""`embedq up` as a user runs it: everything starts, SIGTERM stops every process, a second run finds its data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import create_engine, pool
from sqlalchemy.orm import Session
from support.services import scratch_dir

from app.cli.embedded import EmbeddedPostgres, EmbeddedRedis, find_free_port
from app.models import Job

pytestmark = pytest.mark.e2e

EMBEDQ = Path(sys.executable).with_name("embedq")
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class Ports:
    api: int
    flower: int
    postgres: int
    redis: int


@dataclass
class UpRun:
    """One `embedq up` subprocess and where it writes."""

    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-60:])


@pytest.fixture
def state_dir() -> Iterator[Path]:
    with scratch_dir("embedq-test-up-") as path:
        yield path


@pytest.fixture
def ports(state_dir: Path) -> Iterator[Ports]:
    chosen = Ports(find_free_port(), find_free_port(), find_free_port(), find_free_port())
    yield chosen
    # Whatever happened to `up`, leave no server behind.
    EmbeddedPostgres(state_dir / "postgres", chosen.postgres).stop()
    EmbeddedRedis(state_dir / "redis", chosen.redis).stop()


def start_up(
    state_dir: Path, ports: Ports, run: int, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> UpRun:
    # With the session's URLs unset, `up` must start its own embedded services.
    env = {
        k: v for k, v in {**os.environ, **(env or {})}.items() if k not in ("EMBEDQ_DATABASE_URL", "EMBEDQ_REDIS_URL")
    }
    env.update(
        EMBEDQ_API_PORT=str(ports.api),
        EMBEDQ_FLOWER_PORT=str(ports.flower),
        EMBEDQ_EMBEDDED_PG_PORT=str(ports.postgres),
        EMBEDQ_EMBEDDED_REDIS_PORT=str(ports.redis),
    )
    log_path = state_dir / f"up-{run}.log"
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            [str(EMBEDQ), "up", "--state-dir", str(state_dir), "--stop-timeout", "30", *extra_args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return UpRun(popen, log_path)


def wait_for_200(up: UpRun, url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert up.popen.poll() is None, f"embedq up exited with {up.popen.returncode}:\n{up.log_tail()}"
        assert time.monotonic() < deadline, f"{url} did not answer 200 in {START_TIMEOUT_S}s:\n{up.log_tail()}"
        time.sleep(0.5)


def wait_for_banner(up: UpRun) -> dict[str, str]:
    """Wait for the lines `up` prints once it is ready; return the URLs it names, by label."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while "embedq is up" not in (text := up.log_path.read_text(errors="replace")):
        assert up.popen.poll() is None, f"embedq up exited with {up.popen.returncode}:\n{up.log_tail()}"
        assert time.monotonic() < deadline, f"no banner in {START_TIMEOUT_S}s:\n{up.log_tail()}"
        time.sleep(0.5)
    banner = text[text.index("embedq is up") :].splitlines()
    return {label: url for label, url in (line.split() for line in banner if "http://" in line)}


def _live(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _server_processes(state_dir: Path) -> list[psutil.Process]:
    """Return the embedded Postgres (with its backends) and Valkey processes of ``state_dir``."""
    postmaster = psutil.Process(int((state_dir / "postgres" / "postmaster.pid").read_text().split()[0]))
    valkey = psutil.Process(int((state_dir / "redis" / "valkey.pid").read_text().strip()))
    return [postmaster, *postmaster.children(recursive=True), valkey]


def everything_of(up: UpRun, state_dir: Path, expected: tuple[str, ...]) -> list[psutil.Process]:
    """Return every process `up` runs: its children (checked against ``expected``) and the servers."""
    family = psutil.Process(up.popen.pid).children(recursive=True)
    names = " ".join(" ".join(p.cmdline()) for p in family)
    assert all(part in names for part in expected), names
    return family + _server_processes(state_dir)


def assert_all_gone(up: UpRun, processes: list[psutil.Process]) -> None:
    deadline = time.monotonic() + 15
    while (alive := [p for p in processes if _live(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"still running after `embedq up` exited: {alive}\n{up.log_tail()}"


def stop_and_check_everything_is_gone(
    up: UpRun, state_dir: Path, expected: tuple[str, ...] = ("uvicorn", "worker", "beat", "flower")
) -> None:
    processes = everything_of(up, state_dir, expected)
    up.popen.send_signal(signal.SIGTERM)
    code = up.popen.wait(timeout=STOP_TIMEOUT_S)
    assert code == 0, up.log_tail()
    assert_all_gone(up, processes)


def test_up_runs_everything_stops_cleanly_and_finds_its_data_again(state_dir: Path, ports: Ports) -> None:
    database_url = f"postgresql+psycopg://postgres@127.0.0.1:{ports.postgres}/embedq"
    engine = create_engine(database_url, poolclass=pool.NullPool)
    marker = uuid.uuid4()

    first = start_up(state_dir, ports, run=1)
    try:
        wait_for_200(first, f"http://127.0.0.1:{ports.api}/healthz")
        wait_for_200(first, f"http://127.0.0.1:{ports.flower}/healthcheck")
        urls = wait_for_banner(first)
        api_root = f"http://127.0.0.1:{ports.api}"
        assert urls == {
            "UI": f"{api_root}/ui",
            "API": api_root,
            "Docs": f"{api_root}/docs",
            "Flower": f"http://127.0.0.1:{ports.flower}",
        }, urls
        for label in ("UI", "Docs", "Flower"):
            assert httpx.get(urls[label], timeout=5.0).status_code == 200, label
        with Session(engine) as session:
            session.add(Job(id=marker, kind="embeddings", model="kept-across-restarts"))
            session.commit()
        rival = subprocess.run(
            [str(EMBEDQ), "up", "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=60
        )
        assert rival.returncode != 0 and "another `embedq up` is running" in rival.stderr, rival.stderr
        stop_and_check_everything_is_gone(first, state_dir)
    finally:
        if first.popen.poll() is None:
            first.popen.kill()
    assert "embedq is up" in first.log_path.read_text()

    second = start_up(state_dir, ports, run=2)
    try:
        wait_for_200(second, f"http://127.0.0.1:{ports.api}/healthz")
        with Session(engine) as session:
            kept = session.get(Job, marker)
            assert kept is not None and kept.model == "kept-across-restarts"
        stop_and_check_everything_is_gone(second, state_dir)
    finally:
        if second.popen.poll() is None:
            second.popen.kill()
        engine.dispose()


def _child(up: UpRun, part: str) -> psutil.Process:
    return next(p for p in psutil.Process(up.popen.pid).children() if part in " ".join(p.cmdline()))


def wait_for_log(up: UpRun, text: str, timeout: float = START_TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout
    while text not in (log := up.log_path.read_text(errors="replace")):
        assert up.popen.poll() is None, f"embedq up exited with {up.popen.returncode}:\n{up.log_tail()}"
        assert time.monotonic() < deadline, f"no {text!r} in the log after {timeout}s:\n{up.log_tail()}"
        time.sleep(0.3)
    return log


def test_up_restarts_a_killed_child_and_leaves_a_crash_looping_one_down(state_dir: Path, ports: Ports) -> None:
    # Flower cannot bind its port: it exits at every start, while everything else runs.
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", ports.flower))
    squatter.listen()
    restarts = 2
    up = start_up(
        state_dir, ports, run=1, env={"EMBEDQ_UP_RESTART_INITIAL_S": "0.2", "EMBEDQ_UP_CRASH_RESTARTS": str(restarts)}
    )
    try:
        api_root = f"http://127.0.0.1:{ports.api}"
        wait_for_200(up, f"{api_root}/healthz")
        log = wait_for_log(up, "flower exited with code 1, 3 exits in 120 s")
        assert "not restarting it (restarted 2 times); everything else stays up" in log
        assert log.count("restarted flower (pid") == restarts
        wait_for_banner(up)  # printed once Flower was given up on
        assert httpx.get(f"{api_root}/healthz", timeout=5).status_code == 200
        ready = httpx.get(f"{api_root}/readyz", timeout=10).json()
        assert any(
            line.startswith("processes: flower: exited with code 1 and crashed too often")
            for line in ready["not_ready"]
        ), ready

        api = _child(up, "uvicorn")
        api.kill()
        wait_for_log(up, "api exited with code -9; restarting it in 0.2 s (restart 1)")
        wait_for_200(up, f"{api_root}/healthz")
        assert _child(up, "uvicorn").pid != api.pid
        assert up.popen.poll() is None
        stop_and_check_everything_is_gone(up, state_dir, expected=("uvicorn", "worker", "beat"))
    finally:
        squatter.close()
        if up.popen.poll() is None:
            up.popen.kill()
