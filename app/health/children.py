"""The state of the processes `embedq up` supervises, as a file the supervisor writes and `/readyz` reads.

The API is one of those children, so it cannot ask the supervisor; the supervisor writes this small JSON file
(atomically: temp file + rename) whenever a child's state changes, and points its children at it with
``EMBEDQ_SUPERVISOR_STATE_FILE``. Outside `embedq up` (compose, Kubernetes) the setting is unset and
readiness does not look for it: there the orchestrator restarts processes.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path


class ChildState(StrEnum):
    RUNNING = "running"
    RESTARTING = "restarting"
    DOWN = "down"


@dataclass(frozen=True)
class ChildStatus:
    """What the supervisor knows of one child: its state, how often it was restarted, how it last exited."""

    name: str
    state: ChildState
    restarts: int = 0
    last_exit_code: int | None = None
    restart_in_s: float | None = None

    def describe(self) -> str:
        """Return one line naming the child and why it is not running."""
        exited = f"exited with code {self.last_exit_code}"
        if self.state is ChildState.RESTARTING:
            return f"{self.name}: {exited}, restarting in {self.restart_in_s or 0:.0f} s (restart {self.restarts + 1})"
        return f"{self.name}: {exited} and crashed too often to restart; see the `embedq up` log"


def write_children(path: Path, children: list[ChildStatus]) -> None:
    """Replace the state file with ``children`` in one rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".children-", suffix=".json")
    with os.fdopen(fd, "w") as out:
        json.dump([asdict(child) for child in children], out)
    os.replace(tmp, path)


def read_children(path: Path) -> list[ChildStatus]:
    """Return the supervised children the file lists (none when it does not exist yet)."""
    try:
        rows = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    return [ChildStatus(**{**row, "state": ChildState(row["state"])}) for row in rows]
