"""The process supervisor of `embedq up`: it starts children, restarts the ones that crash, and stops them all.

A child that exits while `up` runs is restarted after a delay that starts at ``up_restart_initial_s`` and
doubles with each crash inside ``up_crash_window_s``, up to ``up_restart_max_s``. A child that crashes more
than ``up_crash_restarts`` times inside that window is left down, with a message in red, while everything
else keeps running: one worker killed for its memory must not take the API and the database with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from app.core.config import Settings
from app.health.children import ChildState, ChildStatus, write_children

log = logging.getLogger("embedq.up")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child before exec: if the supervisor is SIGKILLed, the kernel SIGTERMs its children
    # so no orphaned API keeps holding the port.
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _red(message: str) -> str:
    return f"\033[31m{message}\033[0m" if sys.stderr.isatty() else message


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a crashed child: exponential backoff, and a cap on crashes inside a window."""

    initial_s: float
    max_s: float
    max_restarts: int
    window_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RestartPolicy:
        return cls(settings.up_restart_initial_s, settings.up_restart_max_s, settings.up_crash_restarts,
                   settings.up_crash_window_s)  # fmt: skip

    def delay(self, crashes: int) -> float | None:
        """Return the wait before restarting after the ``crashes``-th crash in the window; None: leave it down."""
        if crashes > self.max_restarts:
            return None
        return min(self.initial_s * 2 ** (crashes - 1), self.max_s)


@dataclass
class Child:
    """A supervised child process, alone in its process group, with its restart bookkeeping."""

    name: str
    args: list[str]
    env: Mapping[str, str]
    popen: subprocess.Popen[bytes] | None = None
    state: ChildState = ChildState.RUNNING
    restarts: int = 0
    last_exit_code: int | None = None
    restart_at: float = 0.0
    crashes: deque[float] = field(default_factory=deque)

    def start(self) -> None:
        """Start (or start again) the child's command."""
        self.popen = subprocess.Popen(
            self.args, env=dict(self.env), stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        self.state = ChildState.RUNNING

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def exit_code(self) -> int | None:
        """Return the exit code if the child has exited, else None."""
        return self.popen.poll() if self.popen else None

    def terminate(self) -> None:
        """Ask the child to stop (API: graceful; worker: finish running tasks)."""
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def kill_group(self) -> None:
        """SIGKILL the child's whole process group, including pool processes it left behind."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def status(self, now: float) -> ChildStatus:
        """Return what `/readyz` and the log need to know of this child."""
        restart_in = max(0.0, self.restart_at - now) if self.state is ChildState.RESTARTING else None
        return ChildStatus(self.name, self.state, self.restarts, self.last_exit_code, restart_in)


@dataclass
class ProcessSupervisor:
    """Keeps a set of children running: restarts the ones that crash, leaves crash-looping ones down."""

    policy: RestartPolicy
    state_file: Path
    children: list[Child] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], env: Mapping[str, str]) -> Child:
        """Start ``args`` as a supervised child named ``name``."""
        child = Child(name, args, env)
        child.start()
        self.children.append(child)
        log.info("started %s (pid %s)", name, child.pid)
        self.publish()
        return child

    def tend(self, now: float | None = None) -> None:
        """Notice children that exited and restart the ones whose backoff has run out."""
        now = time.monotonic() if now is None else now
        changed = False
        for child in self.children:
            if child.state is ChildState.RUNNING and (code := child.exit_code()) is not None:
                self._crashed(child, code, now)
                changed = True
            elif child.state is ChildState.RESTARTING and now >= child.restart_at:
                child.start()
                child.restarts += 1
                log.warning("restarted %s (pid %s, restart %d)", child.name, child.pid, child.restarts)
                changed = True
        if changed:
            self.publish(now)

    def _crashed(self, child: Child, code: int, now: float) -> None:
        child.kill_group()  # a killed worker's pool processes would otherwise run on, holding their tasks
        child.last_exit_code = code
        child.crashes.append(now)
        while child.crashes and child.crashes[0] < now - self.policy.window_s:
            child.crashes.popleft()
        delay = self.policy.delay(len(child.crashes))
        if delay is None:
            child.state = ChildState.DOWN
            log.error(_red(
                f"{child.name} exited with code {code}, {len(child.crashes)} exits in "
                f"{self.policy.window_s:.0f} s: not restarting it (restarted {child.restarts} times); "
                "everything else stays up. Read its log above, fix the cause and restart `embedq up`"
            ))  # fmt: skip
            return
        child.state = ChildState.RESTARTING
        child.restart_at = now + delay
        log.error("%s exited with code %s; restarting it in %.1f s (restart %d)", child.name, code, delay,
                  child.restarts + 1)  # fmt: skip

    def is_down(self, name: str) -> bool:
        """Return True if the child called ``name`` crashed too often and is left down."""
        return any(child.name == name and child.state is ChildState.DOWN for child in self.children)

    def publish(self, now: float | None = None) -> None:
        """Write every child's state where `/readyz` reads it."""
        now = time.monotonic() if now is None else now
        write_children(self.state_file, [child.status(now) for child in self.children])

    def stop_all(self, timeout: float) -> None:
        """SIGTERM every child, SIGKILL each one's group once it exited or ``timeout`` passed."""
        for child in self.children:
            child.terminate()
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.popen is None:
                continue
            try:
                child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %ss; killing it", child.name, timeout)
            child.kill_group()
