"""MkDocs hooks (mkdocs.yml ``hooks:``): add the generated reference pages to the site at build time.

The pages are never written to ``docs/``: each build renders them from the code next to mkdocs.yml, so
they cannot drift from it. Importing ``app.main`` needs no running service.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

SETTINGS_PAGE = "reference/configuration.md"
API_PAGE = "reference/api.md"


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Put the repository that holds mkdocs.yml first on ``sys.path``, so its code is what gets documented."""
    root = str(Path(config.config_file_path).resolve().parent)
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the configuration and API reference pages, rendered from Settings and the OpenAPI schema."""
    from app.core.config import Settings
    from app.main import app
    from docsgen import api_reference, settings_reference

    files.append(File.generated(config, SETTINGS_PAGE, content=settings_reference.render(Settings)))
    files.append(File.generated(config, API_PAGE, content=api_reference.render(app.openapi())))
    return files
