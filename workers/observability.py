"""Worker signal handlers: embedq's log format, job and task ids on every record, the metrics server, and traces."""

from __future__ import annotations

import os
import re
from contextvars import Token
from typing import Any

from celery import signals

from app.core.config import get_settings
from app.observability.logging import configure_logging, job_id_var, task_id_var, task_name_var
from app.observability.tracing import flush_tracing, setup_tracing
from workers import metrics

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# Tokens to restore the log context when each running task ends, by task id.
_context_tokens: dict[str, list[tuple[Any, Token[str | None]]]] = {}


def job_id_of(args: Any, kwargs: Any) -> str | None:
    """Return the job id a task was sent for: its ``job_id`` keyword, else a first argument that is a UUID."""
    if isinstance(kwargs, dict) and isinstance(kwargs.get("job_id"), str):
        return kwargs["job_id"]
    if args and isinstance(args[0], str) and _UUID.match(args[0]):
        return args[0]
    return None


def _setup_logging(loglevel: Any = None, **_: Any) -> None:
    # Connected, this replaces Celery's own logging setup in the parent (children inherit it).
    configure_logging(get_settings(), level=loglevel or None)


def _worker_init(**_: Any) -> None:
    metrics.start_server(get_settings())


def _worker_shutdown(**_: Any) -> None:
    flush_tracing()
    metrics.stop_server()


def start_tracing(**_: Any) -> None:
    """Trace this process's tasks if OTEL_* asks for it: in each prefork child, or in a solo or thread pool's worker."""
    setup_tracing("worker")


def _child_shutdown(**_: Any) -> None:
    flush_tracing()
    metrics.child_exited(os.getpid())


def _task_prerun(task_id: str, task: Any, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    _context_tokens[task_id] = [
        (task_id_var, task_id_var.set(task_id)),
        (task_name_var, task_name_var.set(task.name)),
        (job_id_var, job_id_var.set(job_id_of(args, kwargs))),
    ]


def _task_postrun(task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
    metrics.task_finished(task.name, state or "UNKNOWN")
    for var, token in reversed(_context_tokens.pop(task_id, [])):
        var.reset(token)


def connect() -> None:
    """Connect the handlers (weakly referenced functions at module level, so they stay connected)."""
    signals.setup_logging.connect(_setup_logging)
    signals.worker_init.connect(_worker_init)
    signals.worker_shutdown.connect(_worker_shutdown)
    signals.worker_process_shutdown.connect(_child_shutdown)
    signals.worker_process_init.connect(start_tracing)
    signals.task_prerun.connect(_task_prerun)
    signals.task_postrun.connect(_task_postrun)
