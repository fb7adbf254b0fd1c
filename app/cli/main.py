"""The `embedq` command: `up` runs everything on one machine; `migrate` and `worker` run one piece."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from app.cli import batch_commands, client_commands, keys_commands, models_commands
from app.cli.devices import (
    DeviceSelectionError,
    default_nodename,
    detect_gpus,
    device_workers,
    pool_processes,
    select_devices,
    worker_command,
)
from app.cli.embedded import EmbeddedPostgres, EmbeddedServiceError
from app.cli.migrations import upgrade_head
from app.cli.per_device import run_device_workers
from app.cli.up import (
    ALL_QUEUES,
    DATABASE_NAME,
    FlowerAuthMissingError,
    StateDirInUseError,
    UpOptions,
    api_command,
    run_up,
)
from app.core.config import get_settings
from app.core.queues import Queue
from app.health.liveness import check_liveness, liveness_dir
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
    help="Worker pool processes (per GPU with --devices) [default: EMBEDQ_WORKER_CONCURRENCY].",
)
@click.option(
    "--devices",
    metavar="all|ID,ID,...",
    help="One worker per GPU (`all`, or ids as `nvidia-smi -L` numbers them), each seeing only its GPU.",
)
@click.option(
    "-n",
    "--name",
    help="Celery node name; give each worker on one host its own [default: <first queue>@<host>, e.g. bulk@gpu-3].",
)
@click.option(
    "--stop-timeout",
    type=click.FloatRange(min=0),
    help="With --devices: seconds the workers get to finish their tasks after SIGTERM [default: as long as "
    "they take; a second signal kills them].",
)
def worker(
    queues: str, concurrency: int | None, devices: str | None, name: str | None, stop_timeout: float | None
) -> None:
    """Run a Celery worker against EMBEDQ_DATABASE_URL and EMBEDQ_REDIS_URL (replaces this process).

    With --devices, run one supervised worker per GPU instead, named after its first queue and GPU
    (e.g. inference-gpu2@host).
    """
    settings = get_settings()
    try:
        settings.require_services()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    if concurrency is None:
        gpus = detect_gpus(os.environ) if settings.worker_concurrency == 0 else []
        concurrency = pool_processes(settings.worker_concurrency, settings.device, gpus)
    if devices is None and stop_timeout is not None:
        raise click.UsageError("--stop-timeout goes with --devices: a lone worker stops as Celery does")
    if devices is not None and name is not None:
        raise click.UsageError("--name goes without --devices: per-GPU workers are named <first queue>-gpu<N>@<host>")
    if devices is None:
        args = worker_command(queues, concurrency, name or default_nodename(queues))
        os.execv(args[0], args)
    try:
        chosen = select_devices(devices, detect_gpus(os.environ))
    except DeviceSelectionError as exc:
        raise click.ClickException(str(exc)) from exc
    children = device_workers(chosen, queues, concurrency, os.environ)
    sys.exit(run_device_workers(children, settings, dict(os.environ), stop_timeout))


@main.command("worker-alive")
@click.option(
    "--max-age",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds since a worker last touched its liveness file [default: EMBEDQ_WORKER_LIVENESS_MAX_AGE_S].",
)
@click.option("--node", help="Check only this worker (its node name, e.g. inference@host) [default: every one].")
def worker_alive(max_age: float | None, node: str | None) -> None:
    """Exit 0 if this host's workers touched their liveness files lately, 1 if one is stale or none is there.

    For container healthchecks and Kubernetes liveness probes: a worker's main process touches its file
    every EMBEDQ_WORKER_LIVENESS_INTERVAL_S (in EMBEDQ_WORKER_LIVENESS_DIR) while its event loop runs.
    """
    settings = get_settings()
    verdict = check_liveness(liveness_dir(settings), max_age or settings.worker_liveness_max_age_s, node)
    click.echo(verdict.message, err=not verdict.alive)
    sys.exit(0 if verdict.alive else 1)


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
