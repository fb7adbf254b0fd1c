"""``embedq keys create|list|revoke``: manage API keys straight in Postgres (no API, no key needed).

They reach the database of EMBEDQ_DATABASE_URL, or else the embedded one of ``embedq up`` (started for
the command if it is not running), so whoever can run them is an operator already.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy import create_engine, pool
from sqlalchemy.orm import Session

from app.cli.embedded import EmbeddedPostgres, EmbeddedServiceError
from app.cli.up import DATABASE_NAME
from app.core.config import Settings, get_settings
from app.core.errors import EmbedqError
from app.keys import service
from app.models.api_key import ApiKey


@contextmanager
def _database_url(settings: Settings) -> Iterator[str]:
    if settings.database_url is not None:
        yield settings.database_url
        return
    postgres = EmbeddedPostgres(settings.state_dir / "postgres", settings.embedded_pg_port)
    try:
        started = postgres.start()
        url = postgres.ensure_database(DATABASE_NAME)
    except EmbeddedServiceError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        yield Settings(database_url=url).database_url or url
    finally:
        # Leave a server that `embedq up` is using running.
        if started:
            postgres.stop()


@contextmanager
def _session() -> Iterator[Session]:
    """Yield a session on embedq's database, committed on success; domain errors become click errors."""
    with _database_url(get_settings()) as url:
        engine = create_engine(url, poolclass=pool.NullPool)
        try:
            with Session(engine, expire_on_commit=False) as session, session.begin():
                yield session
        except EmbedqError as exc:
            raise click.ClickException(exc.message) from exc
        finally:
            engine.dispose()


def _row(key: ApiKey) -> dict[str, object]:
    return {
        "id": key.id,
        "tenant": key.tenant,
        "name": key.name,
        "admin": key.is_admin,
        "max_concurrent_jobs": key.max_concurrent_jobs,
        "rpm": key.requests_per_minute,
        "created_at": key.created_at.isoformat(timespec="seconds") if key.created_at else None,
        "revoked_at": key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else None,
    }


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (stored hashed in Postgres; each belongs to one tenant)."""


@keys.command()
@click.option("--tenant", required=True, help="The tenant the key acts for: its jobs, collections, models, webhooks.")
@click.option("--admin", is_flag=True, help="The key sees and manages every tenant's resources.")
@click.option("--name", help="A note saying who or what uses the key.")
@click.option(
    "--max-concurrent-jobs",
    type=click.IntRange(min=0),
    help="Queued+running jobs this key may have; 0: no limit [default: EMBEDQ_DEFAULT_MAX_CONCURRENT_JOBS].",
)
@click.option(
    "--rpm",
    type=click.IntRange(min=0),
    help="Requests per minute on the synchronous endpoints; 0: no limit [default: EMBEDQ_DEFAULT_REQUESTS_PER_MINUTE].",
)
def create(tenant: str, admin: bool, name: str | None, max_concurrent_jobs: int | None, rpm: int | None) -> None:
    """Create a key and print it once: only its hash is stored, so it cannot be shown again."""
    with _session() as session:
        key, raw = service.create_key(
            session,
            tenant=tenant,
            is_admin=admin,
            name=name,
            max_concurrent_jobs=max_concurrent_jobs,
            requests_per_minute=rpm,
        )
    click.echo(raw)
    role = "admin key" if admin else "key"
    click.echo(f"created {role} {key.id} for tenant {key.tenant!r}; store it now, it is not shown again", err=True)


@keys.command(name="list")
@click.option("--tenant", help="Only this tenant's keys.")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_(tenant: str | None, include_revoked: bool, as_json: bool) -> None:
    """List keys (never their secrets): id, tenant, name, admin, limits, created and revoked times."""
    with _session() as session:
        rows = [_row(k) for k in service.list_keys(session, tenant=tenant, include_revoked=include_revoked)]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    columns = ("id", "tenant", "name", "admin", "max_concurrent_jobs", "rpm", "created_at", "revoked_at")
    table = [columns] + [tuple("-" if row[c] is None else str(row[c]) for c in columns) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


@keys.command()
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke key KEY_ID (the id `keys list` shows, or the whole key): its next request gets 401."""
    if key_id.startswith("eq_"):
        key_id = key_id.split("_")[1]
    with _session() as session:
        key = service.revoke_key(session, key_id)
    click.echo(f"revoked key {key.id} of tenant {key.tenant!r}")
