"""The dashboard's pages and assets over HTTP, in-process: served without a key, and complete."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from support.settings import SettingsEnv

from app.main import create_app
from app.ui.routes import UI_DIR

PAGES = ["/ui", "/ui/jobs/3f0c0000-0000-4000-8000-000000000000", "/ui/collections", "/ui/models"]


@pytest.fixture
def client_with_keys(settings_env: SettingsEnv) -> TestClient:
    settings_env.set(EMBEDQ_API_KEYS='["secret-key"]', EMBEDQ_AUTH_DISABLED="false")
    return TestClient(create_app())


@pytest.mark.parametrize("path", PAGES)
def test_pages_need_no_key_but_the_api_still_does(client_with_keys: TestClient, path: str) -> None:
    page = client_with_keys.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="key-dialog"' in page.text
    assert client_with_keys.get("/jobs").status_code == 401


def test_every_asset_a_page_or_script_names_is_served(client_with_keys: TestClient) -> None:
    names: set[str] = set()
    for path in PAGES:
        names |= set(re.findall(r'/ui/static/([\w.-]+)"', client_with_keys.get(path).text))
    for script in (UI_DIR / "static").glob("*.js"):
        names |= set(re.findall(r'from "\./([\w.-]+)"', script.read_text()))
    assert names == {path.name for path in (UI_DIR / "static").iterdir()}  # nothing missing, nothing orphaned
    for name in names:
        asset = client_with_keys.get(f"/ui/static/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["cache-control"] == "no-cache"  # revalidated, so an upgrade shows at once


def test_jobs_page_offers_every_status_and_kind_as_a_filter(client_with_keys: TestClient) -> None:
    from app.models.job import JobKind, JobStatus

    html = client_with_keys.get("/ui").text
    for value in [*JobStatus, *JobKind]:
        assert f'<option value="{value}">' in html


def test_a_job_id_in_the_url_is_escaped(client_with_keys: TestClient) -> None:
    html = client_with_keys.get('/ui/jobs/"><img src=x onerror=alert(1)>').text
    assert "<img src=x" not in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html


def test_ui_routes_stay_out_of_the_openapi_schema(client_with_keys: TestClient) -> None:
    assert not [p for p in client_with_keys.get("/openapi.json").json()["paths"] if p.startswith("/ui")]


@pytest.mark.parametrize("path", [*PAGES, "/ui/static/api.js", "/ui/static/dashboard.css"])
def test_pages_and_assets_cannot_be_framed_or_sniffed(client_with_keys: TestClient, path: str) -> None:
    r = client_with_keys.get(path)
    assert r.status_code == 200
    policy = {d.strip().split(" ", 1)[0]: d.strip() for d in r.headers["content-security-policy"].split(";")}
    assert policy["frame-ancestors"] == "frame-ancestors 'none'"
    assert policy["script-src"] == "script-src 'self'" and policy["default-src"] == "default-src 'none'"
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"


def test_no_page_or_script_needs_inline_code_the_policy_refuses() -> None:
    for template in (UI_DIR / "templates").glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), f"{template.name}: inline script"
        assert not re.search(r"\son[a-z]+=|\sstyle=", text), f"{template.name}: inline handler or style"
    for script in (UI_DIR / "static").glob("*.js"):
        assert "innerHTML" not in script.read_text() and "eval(" not in script.read_text(), script.name
