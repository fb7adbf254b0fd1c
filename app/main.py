"""The FastAPI application: routers, error rendering, and auth (a principal per request, rate limits on sync routes)."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from starlette.responses import Response

from app.batches.routes import router as batches_router
from app.catalog.routes import router as models_router
from app.collections.routes import errors_router as ingest_errors_router
from app.collections.routes import router as collections_router
from app.core.config import get_settings
from app.core.error_rendering import SafeJSONResponse, install_safe_error_rendering
from app.core.errors import EmbedqError
from app.core.http_protocol import DeadlineHttpToolsProtocol
from app.core.limits import RequestLimits
from app.core.openapi import document_common_errors
from app.core.outages import answer_outages_with_503
from app.health.routes import router as health_router
from app.hybrid.routes import router as hybrid_router
from app.jobs.routes import router as jobs_router
from app.keys.auth import AUTH_ERRORS, RATE_LIMIT_ERRORS, current_principal, rate_limited
from app.observability.setup import instrument
from app.rerank.routes import router as rerank_router
from app.sources.routes import router as sources_router
from app.training.routes import router as training_router
from app.ui import routes as ui
from app.usage.routes import router as usage_router
from app.v1 import routes as sync_api
from app.v1.errors import error_body, install_openai_errors
from app.webhooks.routes import router as webhooks_router


class HttpProtocol(DeadlineHttpToolsProtocol):
    """The API server's HTTP protocol (``embedq api`` runs uvicorn with it): unparsable requests answered in
    the path's error shape."""

    error_body = staticmethod(error_body)


def _render_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, EmbedqError)
    body = {"detail": exc.message, "code": exc.code, "param": exc.param, **exc.extra}
    return SafeJSONResponse(body, status_code=exc.status_code, headers=exc.headers or None)


def create_app() -> FastAPI:
    """Return a configured embedq API."""
    api = FastAPI(
        title="embedq",
        version="0.1.0",
        summary="Asynchronous embedding jobs over Celery, stored in Postgres/pgvector.",
    )
    api.add_exception_handler(EmbedqError, _render_error)
    install_safe_error_rendering(api)
    answer_outages_with_503(api)
    api.include_router(health_router)
    api.include_router(jobs_router, dependencies=[Depends(current_principal)], responses=AUTH_ERRORS)
    api.include_router(collections_router, dependencies=[Depends(current_principal)], responses=AUTH_ERRORS)
    api.include_router(ingest_errors_router, dependencies=[Depends(current_principal)], responses=AUTH_ERRORS)
    api.include_router(sources_router, dependencies=[Depends(current_principal)], responses=AUTH_ERRORS)
    api.include_router(training_router, dependencies=[Depends(current_principal)], responses=AUTH_ERRORS)
    api.include_router(webhooks_router, dependencies=[Depends(current_principal)], responses=AUTH_ERRORS)
    api.include_router(sync_api.openai_router, dependencies=[Depends(rate_limited)], responses=RATE_LIMIT_ERRORS)
    api.include_router(sync_api.router, dependencies=[Depends(rate_limited)], responses=RATE_LIMIT_ERRORS)
    api.include_router(batches_router, dependencies=[Depends(current_principal)], responses=AUTH_ERRORS)
    api.include_router(models_router, dependencies=[Depends(current_principal)], responses=AUTH_ERRORS)
    api.include_router(usage_router, dependencies=[Depends(current_principal)], responses=AUTH_ERRORS)
    api.include_router(hybrid_router, dependencies=[Depends(rate_limited)], responses=RATE_LIMIT_ERRORS)
    api.include_router(rerank_router, dependencies=[Depends(rate_limited)], responses=RATE_LIMIT_ERRORS)
    # Before instrument(): the metrics middleware, outside this one, counts its 413s and 400s too.
    api.add_middleware(RequestLimits, settings=get_settings(), error_body=error_body)
    instrument(api)
    # The dashboard's pages hold no data (their scripts call the API with the person's key): no key needed.
    api.include_router(ui.router)
    api.mount(ui.STATIC_PATH, ui.static_files, name="ui-static")
    # Last: it wraps the exception handlers added above so /v1 paths answer errors in OpenAI's shape.
    install_openai_errors(api)
    document_common_errors(api)
    return api


app = create_app()
