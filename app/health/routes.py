"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.core.deps import SettingsDep
from app.health.service import readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Return ok while the API process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "names what is not ready"}})
def readyz(settings: SettingsDep) -> JSONResponse:
    """Return 200 when Postgres (migrated), Redis and a worker for every queue answer; else 503 naming what is not."""
    state = readiness(settings)
    body: dict[str, Any] = {
        "ready": state.ready,
        "not_ready": state.not_ready,
        "checks": state.checks,
        "queues": state.queues,
    }
    return JSONResponse(body, status_code=200 if state.ready else 503)
