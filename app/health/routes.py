"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app.core.deps import SettingsDep
from app.health.service import readiness
from app.keys.auth import OptionalPrincipalDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Return ok while the API process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready (an admin key sees what is not)"}})
async def readyz(settings: SettingsDep, caller: OptionalPrincipalDep) -> JSONResponse:
    """Return 200 when Postgres (migrated), Redis, a worker for every queue and `up`'s children are fine; else 503.

    Only an admin key (or EMBEDQ_READYZ_DETAILS_PUBLIC) sees what is not ready: the details name hosts, ports
    and workers, which a load balancer's probe does not need.
    """
    state = await run_in_threadpool(readiness, settings)
    status_code = 200 if state.ready else 503
    if not (settings.readyz_details_public or (caller is not None and caller.is_admin)):
        return JSONResponse({"ready": state.ready}, status_code=status_code)
    body: dict[str, Any] = {
        "ready": state.ready,
        "not_ready": state.not_ready,
        "checks": state.checks,
        "queues": state.queues,
    }
    return JSONResponse(body, status_code=status_code)
