"""Routes of the dashboard: one HTML page per view, and the static CSS and JavaScript they load.

The pages carry no data and need no API key; their scripts call the JSON API (jobs, collections, models,
training, webhooks) with the key the person entered, so the dashboard sees exactly what the key may see.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.responses import Response
from starlette.types import Scope

from app.models.job import JobKind, JobStatus

UI_DIR = Path(__file__).parent
STATIC_PATH = "/ui/static"

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=UI_DIR / "templates")


# The pages load their own scripts and styles and talk to their own API, nothing else; no site may frame
# them (the Cancel button could be clickjacked), and no browser may guess a type other than the one sent.
# Scripts set inline widths through the CSSOM (element.style), which style-src 'self' allows.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


class RevalidatedStaticFiles(StaticFiles):
    """Static files a browser revalidates on every load (a 304 when unchanged), so an upgrade shows at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        return _secured(response)


static_files = RevalidatedStaticFiles(directory=UI_DIR / "static")


def _page(request: Request, template: str, nav: str, **context: Any) -> HTMLResponse:
    page = templates.TemplateResponse(
        request,
        template,
        {"nav": nav, "api_root": request.scope.get("root_path", ""), **context},
    )
    _secured(page)
    return page


@router.get("", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    """Return the jobs list, refreshed live, filterable by status and kind."""
    return _page(
        request,
        "jobs.html",
        nav="jobs",
        statuses=[s.value for s in JobStatus],
        kinds=[k.value for k in JobKind],
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> HTMLResponse:
    """Return one job's page: counts, pace, errors, webhook deliveries, and training loss and evaluation."""
    return _page(request, "job.html", nav="jobs", job_id=job_id)


@router.get("/collections", response_class=HTMLResponse)
def collections_page(request: Request) -> HTMLResponse:
    """Return the collections with their counts and model, and a search box over the one picked."""
    return _page(request, "collections.html", nav="collections")


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request) -> HTMLResponse:
    """Return the models the server can embed with, and the aliases fine-tuning registered."""
    return _page(request, "models.html", nav="models")
