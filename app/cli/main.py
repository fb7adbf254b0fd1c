"""The `embedq` command: `up` runs everything on one machine; `migrate` and `worker` run one piece."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from app.cli import batch_commands, client_commands, keys_commands, models_commands
from app.cli.embedded import EmbeddedPostgres, EmbeddedServiceError
from app.cli.migrations import upgrade_head
from app.cli.up import (
    ALL_QUEUES,
    DATABASE_NAME,
    WORKER_APP,
    FlowerAuthMissingError,
    StateDirInUseError,
    UpOptions,
    api_command,
    run_up,
)
from app.core.config import get_settings
from app.core.queues import Queue
from app.observability.logging import configure_logging


@click.group()
def main() -> None:
    """embedq: asynchronous embedding jobs over Celery, stored in Postgres/pgvector."""
    configure_logging(get_settings())


@main.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where embedded Postgres and Redis keep their data [default: EMBEDQ_STATE_DIR].",
)
@click.option("--no-flower", is_flag=True, help="Do not start the Flower dashboard.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Worker pool processes [default: EMBEDQ_WORKER_CONCURRENCY].",
)
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds children get to stop after SIGTERM before they are killed.",
)
@click.option(
    "--flower-basic-auth",
    metavar="USER:PASSWORD",
    help="Credentials Flower asks for [default: EMBEDQ_FLOWER_BASIC_AUTH; required outside dev].",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Log lines of every process as text or JSON [default: EMBEDQ_LOG_FORMAT].",
)
def up(
    state_dir: Path | None,
    no_flower: bool,
    workers: int | None,
    stop_timeout: float,
    flower_basic_auth: str | None,
    log_format: str | None,
) -> None:
    """Run the API, a worker and Flower, with embedded Postgres and Redis unless their URLs are set."""
    # Through the environment, so the children (and their Settings) see the same choice.
    if flower_basic_auth is not None:
        os.environ["EMBEDQ_FLOWER_BASIC_AUTH"] = flower_basic_auth
    if log_format is not None:
        os.environ["EMBEDQ_LOG_FORMAT"] = log_format
    _local_auth_default()
    get_settings.cache_clear()
    configure_logging(get_settings())
    if get_settings().auth_disabled:
        click.secho(AUTH_OFF_WARNING, fg="red", bold=True, err=True)
    options = UpOptions(state_dir=state_dir, flower=not no_flower, concurrency=workers, stop_timeout=stop_timeout)
    try:
        code = run_up(options)
    except (EmbeddedServiceError, StateDirInUseError, FlowerAuthMissingError) as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(code)


AUTH_OFF_WARNING = (
    "WARNING: authentication is OFF (EMBEDQ_AUTH_DISABLED=true): anyone who can reach the API is an admin "
    "of every tenant. Create a key with `embedq keys create --tenant T` and restart with "
    "EMBEDQ_AUTH_DISABLED=false (or set EMBEDQ_API_KEYS) before exposing this API."
)


def _local_auth_default() -> None:
    """Turn auth off for `up` on a developer's machine unless the environment decided otherwise.

    Explicitly, in the environment the children inherit: only when neither EMBEDQ_AUTH_DISABLED nor
    EMBEDQ_API_KEYS is set and EMBEDQ_ENVIRONMENT is not prod.
    """
    if "EMBEDQ_AUTH_DISABLED" in os.environ or os.environ.get("EMBEDQ_API_KEYS"):
        return
    if os.environ.get("EMBEDQ_ENVIRONMENT", "dev") == "prod":
        return
    os.environ["EMBEDQ_AUTH_DISABLED"] = "true"


@main.command()
def migrate() -> None:
    """Upgrade the database to the newest migration (the embedded one when EMBEDQ_DATABASE_URL is unset)."""
    settings = get_settings()
    if settings.database_url is not None:
        upgrade_head(settings.database_url)
        return
    postgres = EmbeddedPostgres(settings.state_dir / "postgres", settings.embedded_pg_port)
    try:
        started = postgres.start()
        try:
            upgrade_head(postgres.ensure_database(DATABASE_NAME))
        finally:
            # Leave a server that `embedq up` is using running.
            if started:
                postgres.stop()
    except EmbeddedServiceError as exc:
        raise click.ClickException(str(exc)) from exc


def _check_queues(_: click.Context, __: click.Parameter, value: str) -> str:
    unknown = sorted(set(value.split(",")) - {queue.value for queue in Queue})
    if unknown:
        raise click.BadParameter(f"unknown queue(s) {', '.join(unknown)}; choose from {ALL_QUEUES}")
    return value


@main.command()
@click.option(
    "-Q", "--queues", default=ALL_QUEUES, show_default=True, callback=_check_queues,
    help="Comma-separated queues to consume.",
)  # fmt: skip
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="Worker pool processes [default: EMBEDQ_WORKER_CONCURRENCY].",
)
def worker(queues: str, concurrency: int | None) -> None:
    """Run a Celery worker against EMBEDQ_DATABASE_URL and EMBEDQ_REDIS_URL (replaces this process)."""
    settings = get_settings()
    try:
        settings.require_services()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    args = [
        sys.executable, "-m", "celery", "-A", WORKER_APP, "worker", "-Q", queues,
        "--concurrency", str(concurrency or settings.worker_concurrency), "-E", "--loglevel", "INFO",
    ]  # fmt: skip
    os.execv(sys.executable, args)


@main.command()
def api() -> None:
    """Run the API server (uvicorn with the EMBEDQ_API_* deadlines and limits; replaces this process)."""
    args = api_command(get_settings())
    os.execv(args[0], args)


# Commands that talk to a running API: ingest, search, jobs, job (app/cli/client_commands.py).
for _command in client_commands.COMMANDS:
    main.add_command(_command)

# `embedq models pull|list|show` (app/cli/models_commands.py).
main.add_command(models_commands.models)

# `embedq keys create|list|revoke` (app/cli/keys_commands.py).
main.add_command(keys_commands.keys)

# `embedq batch submit requests.jsonl --wait` (app/cli/batch_commands.py).
main.add_command(batch_commands.batch)
