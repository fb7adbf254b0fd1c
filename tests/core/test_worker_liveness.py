"""Worker liveness and per-GPU workers, with real worker processes: the file, `embedq worker-alive`, `--devices`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from celery import Celery
from support.processes import EMBEDQ, ManagedProcess, _spawn, start_beat, start_worker
from support.waiting import wait_until

from app.core.config import Settings
from app.core.queues import Queue
from app.health.liveness import check_liveness, liveness_file

INTERVAL_S = 0.5
MAX_AGE_S = 4.0


def worker_alive(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EMBEDQ), "worker-alive", *args], capture_output=True, text=True, env={**os.environ, **env}, timeout=60
    )


def test_a_file_is_fresh_or_stale_by_its_age_and_no_file_is_not_alive(tmp_path: Path) -> None:
    assert not check_liveness(tmp_path / "absent", 60).alive
    fresh, old = liveness_file(tmp_path, "a@host"), liveness_file(tmp_path, "b@host")
    for path in (fresh, old):
        path.touch()
    now = time.time()
    os.utime(old, (now - 90, now - 90))
    assert check_liveness(tmp_path, 60, node="a@host", now=now).alive
    verdict = check_liveness(tmp_path, 60, now=now)
    assert not verdict.alive and "b@host (90 s ago)" in verdict.message and "a@host" not in verdict.message
    assert check_liveness(tmp_path, 120, now=now).alive
    assert "has no liveness file" in check_liveness(tmp_path, 60, node="c@host").message


def test_the_max_age_must_leave_room_for_a_late_touch() -> None:
    with pytest.raises(ValueError, match="at least twice EMBEDQ_WORKER_LIVENESS_INTERVAL_S"):
        Settings(worker_liveness_interval_s=40, worker_liveness_max_age_s=60)
    assert Settings(worker_liveness_interval_s=30, worker_liveness_max_age_s=60).worker_liveness_max_age_s == 60


@pytest.fixture
def liveness_env(service_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    return {
        **service_env,
        "EMBEDQ_WORKER_LIVENESS_DIR": str(tmp_path / "liveness"),
        "EMBEDQ_WORKER_LIVENESS_INTERVAL_S": str(INTERVAL_S),
    }


@pytest.fixture
def webhooks_worker(liveness_env: dict[str, str]) -> Iterator[ManagedProcess]:
    process = start_worker(liveness_env, queues=[Queue.WEBHOOKS])
    yield process
    if process.alive():
        os.kill(process.pid, signal.SIGCONT)  # a failed test may leave it stopped
    process.stop()


def test_a_worker_is_alive_while_it_runs_and_hung_once_its_main_process_stops(
    liveness_env: dict[str, str], webhooks_worker: ManagedProcess
) -> None:
    node = webhooks_worker.nodename
    assert node is not None
    alive = worker_alive(liveness_env, "--max-age", str(MAX_AGE_S), "--node", node)
    assert alive.returncode == 0, alive.stderr
    assert f"alive: {node}" in alive.stdout

    os.kill(webhooks_worker.pid, signal.SIGSTOP)
    try:
        time.sleep(MAX_AGE_S + 1)
        hung = worker_alive(liveness_env, "--max-age", str(MAX_AGE_S))
        assert hung.returncode == 1 and f"hung: last seen more than {MAX_AGE_S:g} s ago: {node}" in hung.stderr
    finally:
        os.kill(webhooks_worker.pid, signal.SIGCONT)
    wait_until(
        lambda: worker_alive(liveness_env, "--max-age", str(MAX_AGE_S)).returncode == 0,
        30,
        "the worker did not touch its file again after SIGCONT",
    )

    # A worker that stops cleanly takes its file with it: nothing is left to look stale.
    path = Path(liveness_env["EMBEDQ_WORKER_LIVENESS_DIR"]) / node
    assert path.exists()
    assert webhooks_worker.stop() == 0
    assert not path.exists()


def _nodes_answering(redis_url: str, names: list[str]) -> set[str]:
    control = Celery("embedq-tests", broker=redis_url)
    try:
        return {node for reply in control.control.ping(destination=names, timeout=1.0) for node in reply}
    finally:
        control.close()


def test_devices_run_one_pinned_worker_per_gpu_under_one_supervisor(liveness_env: dict[str, str]) -> None:
    # Two GPU ids made up through CUDA_VISIBLE_DEVICES: the webhooks queue never touches a device, so this
    # runs on any host; each child must come up with its own node name and liveness file.
    env = {**liveness_env, "CUDA_VISIBLE_DEVICES": "0,1", "EMBEDQ_UP_RESTART_INITIAL_S": "0.2"}
    supervisor = _spawn("devices", [str(EMBEDQ), "worker", "--devices", "all", "-Q", "webhooks"], env)
    host = socket.gethostname()
    names = [f"webhooks-gpu0@{host}", f"webhooks-gpu1@{host}"]
    try:
        wait_until(
            lambda: _nodes_answering(liveness_env["EMBEDQ_REDIS_URL"], names) == set(names) or not supervisor.alive(),
            120,
            lambda _: f"both workers did not answer; log:\n{supervisor.log_tail()}",
        )
        assert supervisor.alive(), supervisor.log_tail()
        pinned = {child.environ()["CUDA_VISIBLE_DEVICES"] for child in psutil.Process(supervisor.pid).children()}
        assert pinned == {"0", "1"}
        for name in names:
            wait_until(
                lambda name=name: worker_alive(liveness_env, "--node", name).returncode == 0, 30, f"{name} not alive"
            )
        supervisor.popen.send_signal(signal.SIGTERM)
        assert supervisor.popen.wait(timeout=60) == 0, supervisor.log_tail()
        assert not any((Path(liveness_env["EMBEDQ_WORKER_LIVENESS_DIR"]) / name).exists() for name in names)
    finally:
        supervisor.stop(timeout=10)


def test_beat_touches_its_own_liveness_file_on_every_tick(liveness_env: dict[str, str]) -> None:
    beat = start_beat(liveness_env)
    try:
        wait_until(
            lambda: worker_alive(liveness_env, "--node", "beat", "--max-age", "2").returncode == 0 or not beat.alive(),
            60,
            lambda _: f"beat touched no liveness file; log:\n{beat.log_tail()}",
        )
        assert beat.alive(), beat.log_tail()
        first = (Path(liveness_env["EMBEDQ_WORKER_LIVENESS_DIR"]) / "beat").stat().st_mtime
        # It ticks at least every EMBEDQ_WORKER_LIVENESS_INTERVAL_S, however far off the next task is.
        wait_until(
            lambda: (Path(liveness_env["EMBEDQ_WORKER_LIVENESS_DIR"]) / "beat").stat().st_mtime > first + INTERVAL_S,
            10,
            "beat stopped touching its file",
        )
    finally:
        beat.stop()
