"""`embedq up`'s supervisor: backoff, the crash-loop cap, the state file, and /readyz reading it."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from fastapi.testclient import TestClient
from support.settings import SettingsEnv

from app.cli.supervisor import ProcessSupervisor, RestartPolicy
from app.cli.up import FLOWER_AUTH_FILE, flower_env
from app.core.config import Settings
from app.core.queues import Queue
from app.health import service as health
from app.health.children import ChildState, ChildStatus, read_children, write_children
from app.main import create_app

ALWAYS_EXITS = [sys.executable, "-c", "import sys; sys.exit(3)"]
STAYS_UP = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_backoff_doubles_from_the_first_delay_to_the_cap_then_gives_up() -> None:
    policy = RestartPolicy(initial_s=1.0, max_s=30.0, max_restarts=7, window_s=120.0)
    assert [policy.delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, None]
    assert RestartPolicy(1.0, 30.0, 0, 120.0).delay(1) is None


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[ProcessSupervisor]:
    processes = ProcessSupervisor(RestartPolicy(0.05, 0.2, 3, 60.0), tmp_path / "children.json")
    yield processes
    processes.stop_all(timeout=5)


def tend_until(supervisor: ProcessSupervisor, done, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, read_children(supervisor.state_file)
        supervisor.tend()
        time.sleep(0.02)


def test_a_crash_looping_child_is_restarted_n_times_then_left_down_while_others_run(
    supervisor: ProcessSupervisor,
) -> None:
    looping = supervisor.spawn("flower", ALWAYS_EXITS, {})
    steady = supervisor.spawn("api", STAYS_UP, {})
    tend_until(supervisor, lambda: looping.state is ChildState.DOWN)
    assert looping.restarts == 3 and looping.last_exit_code == 3
    assert steady.state is ChildState.RUNNING and steady.exit_code() is None and steady.restarts == 0
    states = {child.name: child for child in read_children(supervisor.state_file)}
    assert states["flower"] == ChildStatus("flower", ChildState.DOWN, 3, 3, None)
    assert states["api"].state is ChildState.RUNNING
    assert supervisor.is_down("flower") and not supervisor.is_down("api")
    # Left down means left down: more tending starts nothing.
    for _ in range(10):
        supervisor.tend()
    assert looping.restarts == 3 and looping.exit_code() is not None


def test_a_killed_child_is_restarted_and_its_group_is_reaped(supervisor: ProcessSupervisor) -> None:
    # A parent with a child of its own in the same process group, as a Celery worker with its pool.
    parent = [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
              "'import time; time.sleep(60)']); time.sleep(60)"]  # fmt: skip
    child = supervisor.spawn("worker", parent, {})
    time.sleep(0.5)
    first = psutil.Process(child.pid)
    pool = first.children()
    assert pool, "the parent did not start its own child"
    first.kill()
    tend_until(supervisor, lambda: child.restarts == 1)
    assert child.state is ChildState.RUNNING and child.pid != first.pid
    psutil.wait_procs(pool, timeout=5)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in pool), "pool left behind"
    [status] = read_children(supervisor.state_file)
    assert status == ChildStatus("worker", ChildState.RUNNING, 1, -9, None)


def test_the_state_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "state" / "children.json"
    assert read_children(path) == []
    rows = [ChildStatus("api", ChildState.RUNNING), ChildStatus("worker", ChildState.RESTARTING, 2, -9, 4.0)]
    write_children(path, rows)
    assert read_children(path) == rows
    assert [p.name for p in path.parent.iterdir()] == ["children.json"]


@pytest.fixture
def readiness_everything_else_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "_database", lambda: "ok")
    monkeypatch.setattr(health, "_migrations", lambda: "ok")
    monkeypatch.setattr(health, "_redis", lambda settings: "ok")
    consumers = {queue.value: (["w@h"] if queue is Queue.INFERENCE else []) for queue in Queue}
    monkeypatch.setattr(health, "_queue_consumers", lambda settings: consumers)


def test_readyz_names_a_child_that_is_down(
    tmp_path: Path, settings_env: SettingsEnv, readiness_everything_else_ok: None
) -> None:
    state_file = tmp_path / "up-children.json"
    settings_env.set(EMBEDQ_SUPERVISOR_STATE_FILE=str(state_file))
    client = TestClient(create_app())
    write_children(state_file, [ChildStatus("api", ChildState.RUNNING), ChildStatus("worker", ChildState.RUNNING)])
    assert client.get("/readyz").json()["checks"]["processes"] == "ok"
    write_children(
        state_file,
        [
            ChildStatus("api", ChildState.RUNNING),
            ChildStatus("worker", ChildState.RESTARTING, 1, -9, 2.0),
            ChildStatus("flower", ChildState.DOWN, 5, 1, None),
        ],
    )
    r = client.get("/readyz")
    assert r.status_code == 503
    [line] = [line for line in r.json()["not_ready"] if line.startswith("processes:")]
    assert line.startswith("processes: worker: exited with code -9, restarting in 2 s (restart 2)"), line
    assert "flower: exited with code 1 and crashed too often to restart" in line


@pytest.mark.parametrize(
    ("env", "key", "detailed"),
    [
        ({}, None, False),
        ({}, "tenant-key-unknown", False),
        ({}, "admin-key", True),
        ({"EMBEDQ_READYZ_DETAILS_PUBLIC": "true"}, None, True),
    ],
    ids=["no key", "unknown key", "admin key", "details public"],
)
def test_readyz_details_need_an_admin_key_when_auth_is_on(
    settings_env: SettingsEnv, readiness_everything_else_ok: None, env: dict, key: str | None, detailed: bool
) -> None:
    settings_env.set(EMBEDQ_AUTH_DISABLED="false", EMBEDQ_API_KEYS="admin-key", **env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = TestClient(create_app()).get("/readyz", headers=headers)
    assert r.status_code == 503  # queues nobody consumes
    if detailed:
        assert r.json()["not_ready"] and "w@h" in r.text
    else:
        assert r.json() == {"ready": False}


def test_flower_gets_a_login_generated_once_whenever_api_auth_is_on(tmp_path: Path) -> None:
    secured = Settings(auth_disabled=False, state_dir=tmp_path, environment="dev")
    first = flower_env(secured)["FLOWER_BASIC_AUTH"]
    user, password = first.split(":")
    assert user == "admin" and len(password) >= 20
    assert (tmp_path / FLOWER_AUTH_FILE).stat().st_mode & 0o777 == 0o600
    assert flower_env(secured)["FLOWER_BASIC_AUTH"] == first  # the same login on every start
    assert flower_env(Settings(auth_disabled=True, state_dir=tmp_path, environment="dev")) == {}
    chosen = Settings(auth_disabled=False, state_dir=tmp_path, flower_basic_auth=["ops:pw"], environment="dev")
    assert flower_env(chosen) == {"FLOWER_BASIC_AUTH": "ops:pw"}
