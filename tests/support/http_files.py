"""A real HTTP file server for http(s):// source tests: uvicorn serving a folder with Starlette's StaticFiles
(HEAD, Range requests, ETag and Last-Modified, as a CDN or the Hugging Face Hub answers), on a free port.

``/private/...`` answers 401 unless the request carries ``Authorization: Bearer <token>``;
``/go?to=<url>`` answers a 302 to ``url`` (a redirect a source's client follows).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from app.cli.embedded import LOCALHOST, find_free_port


class _TokenRequired:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != self.expected:
            await PlainTextResponse("a bearer token is required", status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def _go(request: Request) -> Response:
    return RedirectResponse(request.query_params["to"], status_code=302)


@contextmanager
def http_files(root: Path, token: str) -> Iterator[str]:
    """Serve ``root`` (its ``private`` folder behind ``token``) until the block ends; yield the base URL."""
    (root / "private").mkdir(parents=True, exist_ok=True)
    app = Starlette(
        routes=[
            Route("/go", _go),
            Mount("/private", app=_TokenRequired(StaticFiles(directory=root / "private"), token)),
            Mount("/", app=StaticFiles(directory=root)),
        ]
    )
    port = find_free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=LOCALHOST, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="http-files", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the HTTP file server did not start")
        time.sleep(0.05)
    try:
        yield f"http://{LOCALHOST}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
