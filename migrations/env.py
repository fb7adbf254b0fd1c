"""Alembic environment: migrates the database named by EMBEDQ_DATABASE_URL (or the -x url=... override).

Files are named by applied position (0001_ ... 0006_) and new ones by date; migrations/README.md.
"""

from alembic import context
from sqlalchemy import create_engine, pool

import app.models  # noqa: F401  (registers every table)
from app.core.config import Settings
from app.core.db import Base

target_metadata = Base.metadata


def _include_name(name: str | None, type_: str, _: dict[str, str | None]) -> bool:
    # Vector tables are made at run time, one per collection version (app/collections/vector_store.py).
    return not (type_ == "table" and name is not None and name.startswith("collection_vectors_"))


def _url() -> str:
    override = context.get_x_argument(as_dictionary=True).get("url")
    if override:
        return Settings(database_url=override).database_url or override
    database_url, _ = Settings().require_services()
    return database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, include_name=_include_name)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, include_name=_include_name)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, include_name=_include_name)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
