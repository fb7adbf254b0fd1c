"""`embedq up` as a subprocess for tests: free ports, its log, and waits on what it prints and serves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

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


def child_process(up: UpRun, part: str) -> psutil.Process:
    return next(p for p in psutil.Process(up.popen.pid).children() if part in " ".join(p.cmdline()))


def wait_for_log(up: UpRun, text: str, timeout: float = START_TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout
    while text not in (log := up.log_path.read_text(errors="replace")):
        assert up.popen.poll() is None, f"embedq up exited with {up.popen.returncode}:\n{up.log_tail()}"
        assert time.monotonic() < deadline, f"no {text!r} in the log after {timeout}s:\n{up.log_tail()}"
        time.sleep(0.3)
    return log


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
