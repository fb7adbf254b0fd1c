"""A sync worker on a queue of its own and the APIs it answers, for end-to-end modules of the sync API.

The session's ``worker`` consumes the default sync queue; a module that needs its own settings on the sync
path (a model, a pool, a timeout) gives its processes a queue nobody else consumes.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from support.processes import ManagedProcess, start_api, start_worker


def sync_queue_env(service_env: Mapping[str, str], name: str, **settings: str) -> dict[str, str]:
    """Return ``service_env`` with a sync queue of its own (``sync-<name>-<random>``) and ``settings`` over it."""
    return {**service_env, "EMBEDQ_SYNC_QUEUE": f"sync-{name}-{secrets.token_hex(3)}", **settings}


def start_sync_worker(env: Mapping[str, str], concurrency: int = 1, pool: str = "threads") -> ManagedProcess:
    """Return a running worker that consumes ``env``'s sync queue and nothing else."""
    return start_worker(env, queues=[env["EMBEDQ_SYNC_QUEUE"]], concurrency=concurrency, pool=pool)


@dataclass(frozen=True)
class SyncStack:
    """A sync worker and the APIs that send it requests."""

    worker: ManagedProcess
    apis: list[ManagedProcess]

    @property
    def api(self) -> ManagedProcess:
        return self.apis[0]


@contextmanager
def sync_stack(
    env: Mapping[str, str], *api_settings: Mapping[str, str], concurrency: int = 1, pool: str = "threads"
) -> Iterator[SyncStack]:
    """Yield a sync worker on ``env``'s queue and an API per ``api_settings`` (one plain API when none given).

    Every process is stopped on the way out, the APIs first.
    """
    worker = start_sync_worker(env, concurrency=concurrency, pool=pool)
    apis: list[ManagedProcess] = []
    try:
        for settings in api_settings or ({},):
            apis.append(start_api({**env, **settings}))
        yield SyncStack(worker, apis)
    finally:
        for process in reversed(apis):
            process.stop()
        worker.stop()
