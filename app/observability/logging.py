"""Log setup shared by the API and the workers: text or JSON lines that carry the job id and task id.

The ids live in context variables: the API sets ``job_id`` for requests under ``/jobs/{id}``, a worker
sets ``task_id``, ``task_name`` and ``job_id`` around every task (see ``workers.celery_app``). Every
record logged meanwhile, by any logger, carries them.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from app.core.config import Settings

job_id_var: ContextVar[str | None] = ContextVar("job_id", default=None)
task_id_var: ContextVar[str | None] = ContextVar("task_id", default=None)
task_name_var: ContextVar[str | None] = ContextVar("task_name", default=None)

_CONTEXT = {"job_id": job_id_var, "task_id": task_id_var, "task_name": task_name_var}
# Loggers that servers give handlers of their own; in JSON mode their records go through ours instead.
_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
_TEXT_FORMAT = "%(asctime)s %(levelname)s [%(name)s]%(context)s %(message)s"


class ContextFilter(logging.Filter):
    """Copy the current job and task ids onto each record (``record.job_id`` ..., and ``record.context``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        parts = []
        for name, var in _CONTEXT.items():
            value = var.get()
            setattr(record, name, value)
            if value is not None and name != "task_name":
                parts.append(f"{name.removesuffix('_id')}={value}")
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return True


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name in _CONTEXT:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _EmbedqHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler configure_logging installs (so a second call replaces it instead of adding one)."""


def configure_logging(settings: Settings, level: str | int | None = None) -> None:
    """Send every logger's records to stderr as text or JSON (EMBEDQ_LOG_FORMAT), with job and task ids."""
    handler = _EmbedqHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _EmbedqHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level or settings.log_level.upper())
    # httpx logs each request's whole URL at INFO: a webhook's with the user:password and token it may carry.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if settings.log_format == "json":
        for name in _SERVER_LOGGERS:
            server_logger = logging.getLogger(name)
            server_logger.handlers.clear()
            server_logger.propagate = True


@contextmanager
def log_context(**ids: str | None) -> Iterator[None]:
    """Set ``job_id``, ``task_id`` or ``task_name`` for the records logged inside the block."""
    tokens = [(_CONTEXT[name], _CONTEXT[name].set(value)) for name, value in ids.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
