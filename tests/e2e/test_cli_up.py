"""`embedq up` as a user runs it: everything starts, SIGTERM stops every process, a second run finds its data."""

from __future__ import annotations

import socket
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, pool
from sqlalchemy.orm import Session
from support.up import (
    EMBEDQ,
    Ports,
    child_process,
    start_up,
    stop_and_check_everything_is_gone,
    wait_for_200,
    wait_for_banner,
    wait_for_log,
)

from app.models import Job

pytestmark = pytest.mark.e2e


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

        api = child_process(up, "uvicorn")
        api.kill()
        wait_for_log(up, "api exited with code -9; restarting it in 0.2 s (restart 1)")
        wait_for_200(up, f"{api_root}/healthz")
        assert child_process(up, "uvicorn").pid != api.pid
        assert up.popen.poll() is None
        stop_and_check_everything_is_gone(up, state_dir, expected=("uvicorn", "worker", "beat"))
    finally:
        squatter.close()
        if up.popen.poll() is None:
            up.popen.kill()
