"""`embedq worker --devices`: one Celery worker per GPU, supervised as `embedq up` supervises its children.

A worker that exits is restarted with `up`'s backoff (EMBEDQ_UP_RESTART_*), and left down after too many
crashes while the others keep serving. SIGTERM or SIGINT stops every worker warmly (each finishes its
running tasks, as a lone `celery worker` does); a second signal kills them.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

from app.cli.devices import ChildSpec
from app.cli.supervisor import ProcessSupervisor, RestartPolicy
from app.core.config import Settings

log = logging.getLogger("embedq.worker")

CHILDREN_STATE_FILE = "worker-children.json"
# No limit of our own on a warm stop: a training task may need minutes to reach its checkpoint, and the
# orchestrator's grace period (or a second signal) is the limit.
_UNLIMITED_S = 10.0**9


class _StopRequested(BaseException):
    """SIGINT or SIGTERM arrived."""


def _raise_stop(signum: int, _: FrameType | None) -> None:
    raise _StopRequested(signal.Signals(signum).name)


def _watch(processes: ProcessSupervisor) -> NoReturn:
    while True:
        processes.tend()
        time.sleep(0.5)


def run_device_workers(
    children: Sequence[ChildSpec], settings: Settings, env: dict[str, str], stop_timeout: float | None
) -> int:
    """Return 0 once a signal stopped the workers of ``children``, which run (and are restarted) until then."""
    processes = ProcessSupervisor(RestartPolicy.from_settings(settings), settings.state_dir / CHILDREN_STATE_FILE)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_stop)
    try:
        for child in children:
            processes.spawn(child.name, child.args, {**env, **child.env})
        _watch(processes)
    except _StopRequested as stop:
        log.info("%s received; stopping %d workers (a second signal kills them)", stop, len(children))
    try:
        processes.stop_all(_UNLIMITED_S if stop_timeout is None else stop_timeout)
    except _StopRequested:
        log.warning("second signal: killing the workers")
        for child in processes.children:
            child.kill_group()
    return 0
