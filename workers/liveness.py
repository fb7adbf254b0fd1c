"""The processes' half of the liveness signal: a worker's main process, and celery beat, touch their liveness files.

A worker touches its file on the consumer's timer, like the broker heartbeat (workers/broker_heartbeat.py):
the file stops getting younger when the loop that fetches, acknowledges and re-stamps messages stops, which
is what a hung worker is. Beat touches ``beat`` on each tick of its scheduler loop. The reader is
`embedq worker-alive` (app/health/liveness.py).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from celery import bootsteps
from celery.beat import PersistentScheduler

from app.core.config import get_settings
from app.health.liveness import BEAT_NODE, liveness_dir, liveness_file, touch

log = logging.getLogger(__name__)


class LivenessFile(bootsteps.StartStopStep):
    """Consumer bootstep: touch ``<liveness dir>/<node name>`` every EMBEDQ_WORKER_LIVENESS_INTERVAL_S."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None
        self.path: Path | None = None

    def start(self, c: Any) -> None:
        settings = get_settings()
        self.path = liveness_file(liveness_dir(settings), c.hostname)
        self._beat()
        self.tref = c.timer.call_repeatedly(settings.worker_liveness_interval_s, self._beat)

    def stop(self, c: Any) -> None:
        # Also runs when the consumer reconnects to the broker: the file stays, and ages until it is back.
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _beat(self) -> None:
        assert self.path is not None
        try:
            touch(self.path)
        except OSError as exc:
            log.warning("could not touch the liveness file %s: %s", self.path, exc)


class LivenessScheduler(PersistentScheduler):
    """Celery beat's scheduler, touching ``<liveness dir>/beat`` on every tick; it ticks at least that often."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.max_interval = min(self.max_interval, settings.worker_liveness_interval_s)
        self.liveness_path = liveness_file(liveness_dir(settings), BEAT_NODE)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            touch(self.liveness_path)
        except OSError as exc:
            log.warning("could not touch the liveness file %s: %s", self.liveness_path, exc)
        return super().tick(*args, **kwargs)
