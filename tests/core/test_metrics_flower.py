"""Flower, as `embedq up` and compose run it: behind basic auth, and showing the running workers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support.processes import REPO_ROOT, ManagedProcess, start_worker

from app.cli.embedded import LOCALHOST, find_free_port
from app.cli.up import WORKER_APP, FlowerAuthMissingError, flower_env
from app.core.config import Settings
from app.core.queues import Queue

AUTH = ("ops", "s3cret-pass")


def start_flower(env: dict[str, str], port: int, log_path: Path) -> ManagedProcess:
    args = [
        sys.executable, "-m", "celery", "-A", WORKER_APP, "flower", f"--port={port}", f"--address={LOCALHOST}",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        popen = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ManagedProcess("flower", popen, log_path, base_url=f"http://{LOCALHOST}:{port}")


def test_flower_api_lists_a_running_worker_behind_basic_auth(service_env, tmp_path: Path) -> None:
    worker = start_worker(service_env, queues=[Queue.MAINTENANCE])
    flower_settings = Settings(flower_basic_auth=[":".join(AUTH)])
    flower = start_flower({**service_env, **flower_env(flower_settings)}, find_free_port(), tmp_path / "flower.log")
    try:
        deadline = time.monotonic() + 120
        workers: dict = {}
        while worker.nodename not in workers:
            assert flower.alive(), flower.log_tail()
            assert time.monotonic() < deadline, f"Flower never listed {worker.nodename}: {workers}\n{flower.log_tail()}"
            try:
                r = httpx.get(f"{flower.base_url}/api/workers", params={"refresh": "1"}, auth=AUTH, timeout=10)
                workers = r.json() if r.status_code == 200 else {}
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        queues = [q["name"] for q in workers[worker.nodename].get("active_queues", [])]
        assert queues == [Queue.MAINTENANCE.value]
        assert httpx.get(f"{flower.base_url}/api/workers", timeout=10).status_code == 401
        assert httpx.get(f"{flower.base_url}/api/workers", auth=("ops", "wrong"), timeout=10).status_code == 401
    finally:
        flower.stop()
        worker.stop()


def test_flower_without_credentials_is_refused_outside_dev() -> None:
    with pytest.raises(FlowerAuthMissingError, match="EMBEDQ_FLOWER_BASIC_AUTH"):
        flower_env(Settings(environment="prod", flower_basic_auth=[], auth_disabled=False))
    assert flower_env(Settings(environment="dev")) == {}
    assert flower_env(Settings(flower_basic_auth=["a:b", "c:d"])) == {"FLOWER_BASIC_AUTH": "a:b,c:d"}
    with pytest.raises(ValueError, match="user:password"):
        Settings(flower_basic_auth=["no-password"])
