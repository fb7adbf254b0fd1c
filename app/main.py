"""The FastAPI application: routers, error rendering, and the API-key dependency."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from app.core.errors import EmbedqError
from app.core.security import require_api_key
from app.health.routes import router as health_router
from app.jobs.routes import router as jobs_router


def _render_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EmbedqError)
    body = {"detail": exc.message, "code": exc.code, "param": exc.param, **exc.extra}
    return JSONResponse(body, status_code=exc.status_code)


def create_app() -> FastAPI:
    """Return a configured embedq API."""
    api = FastAPI(
        title="embedq",
        version="0.1.0",
        summary="Asynchronous embedding jobs over Celery, stored in Postgres/pgvector.",
    )
    api.add_exception_handler(EmbedqError, _render_error)
    api.include_router(health_router)
    api.include_router(jobs_router, dependencies=[Depends(require_api_key)])
    return api


app = create_app()
