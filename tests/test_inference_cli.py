"""`embedq up` runs the sync queue on a thread-pool worker of its own, and the job worker leaves that queue alone."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from app.cli.up import Supervisor, UpOptions
from app.core.config import get_settings
from app.core.queues import Queue


@dataclass
class RecordingSupervisor(Supervisor):
    spawned: dict[str, list[str]] = field(default_factory=dict)

    def spawn(self, name: str, args: list[str]) -> None:
        self.spawned[name] = args


def queues_of(args: list[str]) -> set[str]:
    return set(args[args.index("-Q") + 1].split(","))


def test_up_starts_a_thread_pool_worker_for_sync_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBEDQ_SYNC_WORKER_THREADS", "48")
    get_settings.cache_clear()
    try:
        supervisor = RecordingSupervisor(get_settings(), UpOptions(flower=False))
        supervisor.spawn_children()
    finally:
        get_settings.cache_clear()
    sync, jobs = supervisor.spawned["sync-worker"], supervisor.spawned["worker"]
    assert queues_of(sync) == {Queue.SYNC.value}
    assert sync[sync.index("--pool") + 1] == "threads" and sync[sync.index("--concurrency") + 1] == "48"
    assert queues_of(jobs) == {q.value for q in Queue} - {Queue.SYNC.value}
