"""The docs site builds with `mkdocs build --strict`, its settings reference lists every setting, and the
README stays a front page."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.paths import REPO_ROOT

from app.core.config import Settings
from docsgen import settings_reference

ROOT = REPO_ROOT


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the directory of the site built from this checkout, strictly (any warning fails the build)."""
    site_dir = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env["NO_MKDOCS_2_WARNING"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return site_dir


def test_settings_page_lists_every_setting(site: Path) -> None:
    page = (site / "reference" / "configuration" / "index.html").read_text()
    missing = [name for name in settings_reference.field_names(Settings) if f'id="{name.lower()}"' not in page]
    assert not missing, f"settings missing from the configuration reference: {missing}"
    assert len(settings_reference.field_names(Settings)) == len(Settings.model_fields)


def test_rendered_reference_covers_every_field_once() -> None:
    page = settings_reference.render(Settings)
    for name in Settings.model_fields:
        assert page.count(f"### `{settings_reference.env_name(name)}`") == 1, name
    rendered = [name for section in settings_reference.ordered_sections(Settings) for name in section.fields]
    assert sorted(rendered) == sorted(Settings.model_fields)


def test_secret_defaults_are_not_shown() -> None:
    keys = copy.copy(Settings.model_fields["api_keys"])
    keys.default_factory = lambda: ["eq_secret"]
    assert "eq_secret" not in settings_reference.default_text("api_keys", keys)
    url = copy.copy(Settings.model_fields["database_url"])
    url.default = "postgresql://user:hunter2@db/embedq"
    assert "hunter2" not in settings_reference.default_text("database_url", url)


def test_api_page_lists_every_operation(site: Path) -> None:
    from app.main import app
    from docsgen.api_reference import operation_anchor

    page = (site / "reference" / "api" / "index.html").read_text()
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            assert f'id="{operation_anchor(method, path)}"' in page, f"{method.upper()} {path}"


def test_readme_is_a_front_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert "make up" in readme
    assert "make test" in readme
    assert "mkdocs serve" in readme
