"""Alembic driven from Python: the config that finds embedq's migrations, and upgrading to head."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, create_engine, pool

import app
import migrations
from app.core.config import Settings

# An editable install (every checkout, CI, `make`) keeps alembic.ini at the repository root.
REPO_ROOT = Path(app.__file__).resolve().parent.parent


def alembic_config(connection: Connection) -> Config:
    """Return an Alembic config whose migrations run over ``connection``."""
    ini = REPO_ROOT / "alembic.ini"
    if ini.exists():
        config = Config(str(ini))
    else:
        # A regular (non-editable) install ships the migrations package but not alembic.ini.
        config = Config()
        config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["connection"] = connection
    return config


def upgrade_head(database_url: str) -> None:
    """Migrate ``database_url`` to the newest revision, returning once it is committed."""
    url = Settings(database_url=database_url).database_url
    assert url is not None
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.begin() as connection:
            # "heads": tolerate parallel branches while they are being merged.
            command.upgrade(alembic_config(connection), "heads")
    finally:
        engine.dispose()
