"""`embedq up` runs the sync queue on solo-pool workers of their own, and the job worker leaves that queue alone."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from support.settings import SettingsEnv

from app.cli.up import Supervisor, UpOptions
from app.core.config import get_settings
from app.core.cpus import usable_cpus
from app.core.queues import Queue


@dataclass
class RecordingSupervisor(Supervisor):
    spawned: dict[str, list[str]] = field(default_factory=dict)
    envs: dict[str, dict[str, str]] = field(default_factory=dict)

    def spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> None:
        self.spawned[name] = args
        self.envs[name] = dict(extra_env or {})


def queues_of(args: list[str]) -> set[str]:
    return set(args[args.index("-Q") + 1].split(","))


def test_up_starts_a_solo_pool_worker_for_sync_requests(settings_env: SettingsEnv) -> None:
    settings_env.set(EMBEDQ_SYNC_WORKER_PROCESSES="1")
    supervisor = RecordingSupervisor(get_settings(), UpOptions(flower=False))
    supervisor.spawn_children()
    sync, jobs = supervisor.spawned["sync-worker"], supervisor.spawned["worker"]
    assert queues_of(sync) == {Queue.SYNC.value}
    assert sync[sync.index("--pool") + 1] == "solo"
    assert sync[sync.index("-n") + 1] == "sync@%h"
    assert supervisor.envs["sync-worker"]["EMBEDQ_SYNC_PROCESSES"] == "1"
    assert queues_of(jobs) == {q.value for q in Queue} - {Queue.SYNC.value}


def test_up_starts_several_sync_workers_each_told_how_many_share_the_cores(settings_env: SettingsEnv) -> None:
    settings_env.set(EMBEDQ_SYNC_WORKER_PROCESSES="3", EMBEDQ_DEVICE="cpu")
    supervisor = RecordingSupervisor(get_settings(), UpOptions(flower=False))
    supervisor.spawn_children()
    names = sorted(name for name in supervisor.spawned if name.startswith("sync-worker"))
    assert names == ["sync-worker-1", "sync-worker-2", "sync-worker-3"]
    nodes = [supervisor.spawned[name][supervisor.spawned[name].index("-n") + 1] for name in names]
    assert nodes == ["sync@%h", "sync2@%h", "sync3@%h"]  # Celery refuses two workers of one node name
    assert all(queues_of(supervisor.spawned[name]) == {Queue.SYNC.value} for name in names)
    assert {supervisor.envs[name]["EMBEDQ_SYNC_PROCESSES"] for name in names} == {"3"}


def _pool_chosen(pool: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Send the worker app the signal `celery worker --pool POOL` sends before it makes its pool."""
    import workers.celery_app as worker_app

    # torch is not imported by this test process's app code; the worker reads the variables at its import.
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(worker_app, "_in_process_pool", False)
    worker_app._before_the_pool(conf=SimpleNamespace(worker_pool="prefork"), options={"pool": pool})


@pytest.mark.parametrize(
    ("pool", "preset", "expected"),
    [("solo", {}, "10000"), ("threads", {}, "10000"), ("prefork", {}, None), ("solo", {"GOMP_SPINCOUNT": "7"}, "7")],
)
def test_a_worker_running_torch_in_its_own_process_shortens_openmps_spin(
    pool: str, preset: dict[str, str], expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.celery_app as worker_app

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    for name, value in preset.items():
        monkeypatch.setenv(name, value)
    _pool_chosen(pool, monkeypatch)
    assert os.environ.get("GOMP_SPINCOUNT") == expected
    assert worker_app.pool_runs_in_process() == (pool != "prefork")


CORES = usable_cpus()


@pytest.mark.parametrize(
    ("pool", "preset", "expected"),
    [
        ("solo", {}, str(CORES)),
        ("solo", {"EMBEDQ_SYNC_PROCESSES": "2"}, str(max(1, CORES // 2))),
        ("solo", {"EMBEDQ_SYNC_PROCESSES": str(CORES * 2)}, "1"),
        ("solo", {"EMBEDQ_SYNC_TORCH_THREADS": "3", "EMBEDQ_SYNC_PROCESSES": "2"}, "3"),
        ("prefork", {}, None),
        ("solo", {"OMP_NUM_THREADS": "5"}, "5"),
    ],
)
def test_a_worker_running_torch_in_its_own_process_takes_its_share_of_the_cores(
    pool: str, preset: dict[str, str], expected: str | None, monkeypatch: pytest.MonkeyPatch, settings_env: SettingsEnv
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("EMBEDQ_SYNC_TORCH_THREADS", raising=False)
    monkeypatch.delenv("EMBEDQ_SYNC_PROCESSES", raising=False)
    settings_env.set(**preset)
    _pool_chosen(pool, monkeypatch)
    assert os.environ.get("OMP_NUM_THREADS") == expected


# Made as `celery worker` makes it: the app's task modules are imported, then the pool is made, which for the
# solo pool sends worker_process_init in this process, before celeryd_after_setup.
_MAKE_A_SOLO_WORKER = """
import os, sys
from workers.celery_app import celery_app
worker = celery_app.Worker(hostname="probe@test", pool="solo", queues=["sync"])
print(os.environ.get("OMP_NUM_THREADS"), os.environ.get("GOMP_SPINCOUNT"), "torch" in sys.modules)
"""


def test_a_real_solo_worker_sets_the_openmp_variables_before_anything_imports_torch(
    service_env: dict[str, str],
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(service_env, EMBEDQ_SYNC_PROCESSES="2", EMBEDQ_SYNC_OMP_SPIN_COUNT="1234")
    probe = subprocess.run(
        [sys.executable, "-c", _MAKE_A_SOLO_WORKER], env=env, capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert "would not take effect" not in probe.stderr
    assert probe.stdout.split() == [str(max(1, CORES // 2)), "1234", "False"]


@pytest.mark.parametrize("name", ["EMBEDQ_SYNC_WORKER_REQUESTS", "EMBEDQ_SYNC_WORKER_THREADS"])
def test_the_requests_a_sync_worker_holds_are_a_setting_under_its_old_name_too(
    name: str, settings_env: SettingsEnv
) -> None:
    settings_env.set(**{name: "7"})
    assert get_settings().sync_worker_requests == 7
