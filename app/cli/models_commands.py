"""``embedq models pull|push|list|show``: fetch models ahead of time, publish a folder to the whole fleet, and see
what is resolvable, from where, and how."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from app.artifacts.store import ArtifactStoreUnavailableError
from app.catalog import artifacts, model_cache, service
from app.catalog.artifacts import ModelArtifactError
from app.catalog.publishing import push_folder
from app.catalog.repository import RegisteredModelRepository
from app.catalog.resolver import InvalidModelNameError, UnknownModelError, resolve_model, validate_model_name
from app.catalog.sources import ModelDownloadError, ModelScopeMissingError, fetch, hub_order
from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.models.api_key import DEFAULT_TENANT

_COLUMNS = ("id", "source", "family", "dimension", "max_length", "precision", "backend", "loaded", "path")


@click.group()
def models() -> None:
    """Pull models into the cache or EMBEDQ_MODELS_DIR, push a folder to the fleet, list what embedq resolves."""


@models.command()
@click.argument("names", nargs=-1)
@click.option(
    "--source",
    type=click.Choice(["auto", "huggingface", "modelscope"]),
    help="Hub to fetch from; auto tries the other one if the first fails [default: EMBEDQ_MODEL_SOURCE].",
)
@click.option(
    "--models-dir",
    "into_models_dir",
    is_flag=True,
    help="Copy hub files into EMBEDQ_MODELS_DIR/NAME (for images and offline hosts) instead of the hub's cache.",
)
def pull(names: tuple[str, ...], source: str | None, into_models_dir: bool) -> None:
    """Warm this host's models: registered models from the artifact store, others from their hub.

    Without NAMES: every registered (fine-tuned or pushed) model. A NAME that is registered is installed from
    EMBEDQ_ARTIFACT_STORE into EMBEDQ_MODELS_DIR; any other NAME (an 'org/name' id or an alias) is downloaded
    from its hub now, so no worker has to download it later.
    """
    settings = get_settings()
    registered = _registered_names(settings, required=not names)
    for name in names or tuple(registered):
        if name in registered:
            _install_registered(name, settings)
        else:
            _pull_from_hub(name, settings, source, into_models_dir)
    if not names and not registered:
        click.echo("no registered models to pull")


def _registered_names(settings: Settings, *, required: bool) -> list[str]:
    if not settings.database_url:
        if required:
            raise click.ClickException("EMBEDQ_DATABASE_URL is not set: it lists the registered models to pull")
        return []
    with session_scope() as session:
        return [model.name for model in RegisteredModelRepository(session).list_all() if model.revision is not None]


def _install_registered(name: str, settings: Settings) -> None:
    try:
        downloaded = model_cache.ensure_installed(name, settings, fresh=True)
    except ModelArtifactError as exc:
        raise click.ClickException(str(exc)) from exc
    assert settings.models_dir is not None
    revision = artifacts.local_revision(settings.models_dir / name)
    state = "installed" if downloaded else "already here:"
    click.echo(f"{state} {name} revision {revision} in {settings.models_dir / name}")


def _pull_from_hub(name: str, settings: Settings, source: str | None, into_models_dir: bool) -> None:
    target, chosen = _pull_target(name, settings)
    candidates = hub_order(target, chosen if source is None else source, settings)  # type: ignore[arg-type]
    try:
        for candidate in candidates:
            validate_model_name(candidate.repo_id)
        staging = _staging_dir(settings, target) if into_models_dir else None
        hub, folder = fetch(candidates, settings, local_dir=staging, local_files_only=False)
    except (InvalidModelNameError, ModelDownloadError, ModelScopeMissingError) as exc:
        raise click.ClickException(str(exc)) from exc
    if staging is not None:
        folder = _install(staging, settings, target)
    click.echo(f"pulled {target} from {hub} into {folder}")


@models.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", required=True, help="The name every worker serves it as ('name' or 'org/name').")
@click.option("--overwrite", is_flag=True, help="Replace a model registered under NAME (a new revision).")
@click.option("--tenant", default=DEFAULT_TENANT, show_default=True, help="The tenant whose keys may use it.")
def push(folder: Path, name: str, overwrite: bool, tenant: str) -> None:
    """Publish model FOLDER to the artifact store and register it as NAME, so every worker of the fleet serves it."""
    settings = get_settings()
    settings.require_services()
    try:
        model = push_folder(session_scope, folder, name, settings, tenant=tenant, overwrite=overwrite)
    except ValueError as exc:  # a bad name, not a model folder, a file name the store cannot hold
        raise click.ClickException(str(exc)) from exc
    except (OSError, ArtifactStoreUnavailableError) as exc:
        raise click.ClickException(f"could not upload {folder} to {settings.artifact_store}: {exc}") from exc
    click.echo(f"pushed {name} ({model.kind}) revision {model.revision} to {settings.artifact_store}")


def _pull_target(name: str, settings: Settings) -> tuple[str, str]:
    """Return the model name behind ``name`` (an alias is replaced by its target) and the source to use."""
    try:
        validate_model_name(name)
    except InvalidModelNameError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from exc
    entry = settings.model_mapping.get(name)
    target = entry.name if entry is not None else name
    try:
        validate_model_name(target)
    except InvalidModelNameError as exc:
        raise click.BadParameter(f"alias {name!r}: {exc}", param_hint="NAME") from exc
    if "/" not in target:
        raise click.BadParameter(f"{target!r} is not a hub id: pull an 'org/name' model", param_hint="NAME")
    return target, (entry.source if entry is not None and entry.source else settings.model_source)


def _staging_dir(settings: Settings, name: str) -> Path:
    assert settings.models_dir is not None
    staging = settings.models_dir / ".pulling" / name
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def _install(staging: Path, settings: Settings, name: str) -> Path:
    # Files land under a hidden staging folder first: a half-pulled model never looks resolvable.
    assert settings.models_dir is not None
    final = settings.models_dir / name
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(final)
    return final


@models.command()
@click.argument("name")
def show(name: str) -> None:
    """Print what GET /v1/models/NAME says about model NAME (an alias or a name) as JSON."""
    settings = get_settings()
    try:
        description = service.describe(name, resolve_model(name, settings), settings, service.read_loads(settings))
    except (InvalidModelNameError, UnknownModelError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(description.model_dump_json(indent=2))


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print OpenAI's list object (as GET /v1/models) instead.")
def list_models(as_json: bool) -> None:
    """Show every model embedq resolves without a download: default, aliases, packaged, EMBEDQ_MODELS_DIR, caches."""
    settings = get_settings()
    listing = service.list_models(settings, service.read_loads(settings))
    if as_json:
        click.echo(listing.model_dump_json(indent=2))
        return
    rows = [[_cell(getattr(model, column)) for column in _COLUMNS] for model in listing.data]
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(_COLUMNS)]
    for row in [list(_COLUMNS), *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
