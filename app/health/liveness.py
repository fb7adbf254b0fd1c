"""Worker liveness: a file per worker that its main process touches, and the check of how old those files are.

A Celery worker that hangs (its main process blocked, its event loop stopped) still has a process, so an
orchestrator sees nothing wrong. The worker's main process touches ``<liveness dir>/<node name>`` from its
event loop's timer (workers/liveness.py), the same loop that re-stamps the messages it holds, so a file that
stops getting younger means a worker that stopped serving; `embedq worker-alive` turns that into an exit code
for a container healthcheck or a Kubernetes exec probe. A worker that stops cleanly removes its file. Celery
beat touches a file called ``beat`` on each tick of its loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from app.core.config import Settings

# The liveness file of celery beat (one per deployment): `embedq worker-alive --node beat`.
BEAT_NODE = "beat"


@dataclass(frozen=True)
class LivenessVerdict:
    """Whether the workers checked are alive, and one line saying which are not (or how fresh they are)."""

    alive: bool
    message: str


def liveness_dir(settings: Settings) -> Path:
    """Return the folder of the workers' liveness files (EMBEDQ_WORKER_LIVENESS_DIR, else STATE_DIR/liveness)."""
    return settings.worker_liveness_dir or settings.state_dir / "liveness"


def liveness_file(directory: Path, nodename: str) -> Path:
    """Return the liveness file of the worker called ``nodename`` (``inference@host``)."""
    return directory / nodename.replace("/", "_")


def touch(path: Path) -> None:
    """Mark the worker of ``path`` alive now."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def check_liveness(
    directory: Path, max_age_s: float, node: str | None = None, now: float | None = None
) -> LivenessVerdict:
    """Return alive when every liveness file in ``directory`` (or ``node``'s alone) is at most ``max_age_s`` old.

    No file at all is not alive: the worker has not started yet, or it is not on this host.
    """
    now = time.time() if now is None else now
    paths = [liveness_file(directory, node)] if node else sorted(p for p in _files(directory))
    ages: dict[str, float] = {}
    for path in paths:
        try:
            ages[path.name] = now - path.stat().st_mtime
        except FileNotFoundError:
            continue
    if not ages:
        what = f"worker {node}" if node else "no worker"
        return LivenessVerdict(False, f"{what} has no liveness file in {directory}: not started, or not on this host")
    stale = {name: age for name, age in ages.items() if age > max_age_s}
    if stale:
        listed = ", ".join(f"{name} ({age:.0f} s ago)" for name, age in stale.items())
        return LivenessVerdict(False, f"hung: last seen more than {max_age_s:g} s ago: {listed}")
    listed = ", ".join(f"{name} ({age:.0f} s ago)" for name, age in ages.items())
    return LivenessVerdict(True, f"alive: {listed}")


def _files(directory: Path) -> list[Path]:
    try:
        return [p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")]
    except FileNotFoundError:
        return []
