"""`embedq up` runs the sync queue on a solo-pool worker of its own, and the job worker leaves that queue alone."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from support.settings import SettingsEnv

from app.cli.up import Supervisor, UpOptions
from app.core.config import get_settings
from app.core.queues import Queue


@dataclass
class RecordingSupervisor(Supervisor):
    spawned: dict[str, list[str]] = field(default_factory=dict)

    def spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> None:
        self.spawned[name] = args


def queues_of(args: list[str]) -> set[str]:
    return set(args[args.index("-Q") + 1].split(","))


def test_up_starts_a_solo_pool_worker_for_sync_requests() -> None:
    supervisor = RecordingSupervisor(get_settings(), UpOptions(flower=False))
    supervisor.spawn_children()
    sync, jobs = supervisor.spawned["sync-worker"], supervisor.spawned["worker"]
    assert queues_of(sync) == {Queue.SYNC.value}
    assert sync[sync.index("--pool") + 1] == "solo"
    assert queues_of(jobs) == {q.value for q in Queue} - {Queue.SYNC.value}


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
    # torch is not imported by this test process's app code; the worker reads the variable at its import.
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(worker_app, "_in_process_pool", False)
    monkeypatch.setenv("EMBEDQ_POOL_PROCESSES", "1")
    worker_app._remember_pool(SimpleNamespace(concurrency=1, pool_cls=pool))
    assert os.environ.get("GOMP_SPINCOUNT") == expected
    assert worker_app.pool_runs_in_process() == (pool != "prefork")


@pytest.mark.parametrize(
    ("pool", "preset", "expected"),
    [
        ("solo", {}, str(max(1, (os.cpu_count() or 1) - 1))),
        ("solo", {"EMBEDQ_SYNC_TORCH_THREADS": "3"}, "3"),
        ("prefork", {}, None),
        ("solo", {"OMP_NUM_THREADS": "5"}, "5"),
    ],
)
def test_a_worker_running_torch_in_its_own_process_leaves_a_core_to_the_rest(
    pool: str, preset: dict[str, str], expected: str | None, monkeypatch: pytest.MonkeyPatch, settings_env: SettingsEnv
) -> None:
    import workers.celery_app as worker_app

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("EMBEDQ_SYNC_TORCH_THREADS", raising=False)
    settings_env.set(**preset)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(worker_app, "_in_process_pool", False)
    monkeypatch.setenv("EMBEDQ_POOL_PROCESSES", "1")
    worker_app._remember_pool(SimpleNamespace(concurrency=1, pool_cls=pool))
    assert os.environ.get("OMP_NUM_THREADS") == expected


@pytest.mark.parametrize("name", ["EMBEDQ_SYNC_WORKER_REQUESTS", "EMBEDQ_SYNC_WORKER_THREADS"])
def test_the_requests_a_sync_worker_holds_are_a_setting_under_its_old_name_too(
    name: str, settings_env: SettingsEnv
) -> None:
    settings_env.set(**{name: "7"})
    assert get_settings().sync_worker_requests == 7
