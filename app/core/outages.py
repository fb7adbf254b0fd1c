"""Postgres or Redis being down: the API answers 503 with ``Retry-After``, not 500, and a job task retries.

``TRANSIENT_ERRORS`` are the outages a job task waits out (``workers.celery_app.retrying_task``).
"""

from __future__ import annotations

import logging

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.core.store_outages import StoreUnavailableError

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5

# A store that does not answer (the artifact store a worker installs a model from) is waited out the same way.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    redis.exceptions.ConnectionError,
    StoreUnavailableError,
)

_DATABASE = "the database is unreachable or overloaded right now"
_BROKER = (
    "the task queue (Redis) is unreachable right now; a job submitted meanwhile may already be recorded and is "
    "queued once Redis is back, so retry with the same idempotency_key"
)

OUTAGES: dict[type[Exception], str] = {
    sqlalchemy.exc.OperationalError: _DATABASE,
    sqlalchemy.exc.InterfaceError: _DATABASE,
    sqlalchemy.exc.TimeoutError: _DATABASE,
    kombu.exceptions.OperationalError: _BROKER,
    redis.exceptions.ConnectionError: _BROKER,
    redis.exceptions.TimeoutError: _BROKER,
}


def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    what = next(text for kind, text in OUTAGES.items() if isinstance(exc, kind))
    log.warning("%s %s: 503, %s (%s)", request.method, request.url.path, what, type(exc).__name__)
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    body = {
        "detail": f"{what}: try again in a few seconds",
        "code": "service_unavailable",
        "param": None,
        "cause": f"{type(exc).__name__}: {cause[0] if cause else ''}",
    }
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})


def answer_outages_with_503(api: FastAPI) -> None:
    """Render the exceptions of an unreachable Postgres or Redis as 503 on ``api``."""
    for kind in OUTAGES:
        api.add_exception_handler(kind, _unavailable)
