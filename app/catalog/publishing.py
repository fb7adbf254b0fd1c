"""Publishing a model folder that did not come from fine-tuning (``embedq models push``), so every host serves it.

For offline fleets and for models made elsewhere: the folder goes to the artifact store as a new revision,
then the name is registered with that revision (a full model, or a LoRA adapter when the folder holds
embedq's adapter pointer), exactly as a finished fine-tune is.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy.orm import Session

from app.artifacts.store import ArtifactStore
from app.catalog import artifacts
from app.catalog.dimension import folder_dimension
from app.catalog.files import adapter_base
from app.catalog.repository import RegisteredModelRepository
from app.catalog.resolver import validate_model_name
from app.core.config import Settings
from app.core.db import Scope
from app.models.registered_model import RegisteredModel, RegisteredModelKind
from app.training.repository import TrainingRepository

log = logging.getLogger(__name__)

_MODEL_MARKERS = ("config.json", "modules.json")


class PushRefusedError(ValueError):
    """A folder or name that cannot be pushed; the message says what to change."""


def push_folder(
    scope: Scope, folder: Path, name: str, settings: Settings, *, tenant: str, overwrite: bool
) -> RegisteredModel:
    """Upload ``folder`` as a new revision of ``name``, register it for ``tenant``, and return the row."""
    validate_model_name(name)
    if not folder.is_dir() or not any((folder / marker).is_file() for marker in _MODEL_MARKERS):
        raise PushRefusedError(f"{folder} is not a model folder: it holds neither config.json nor modules.json")
    with scope() as session:
        _check_free(session, name, tenant, overwrite)
    store = ArtifactStore.from_settings(settings)
    manifest = artifacts.publish_folder(store, folder, name)
    base = adapter_base(folder)
    model = RegisteredModel(
        name=name,
        base=base or name,
        kind=(RegisteredModelKind.LORA if base else RegisteredModelKind.FULL).value,
        path=str(folder.resolve()),
        dimension=folder_dimension(folder) or 0,
        created_by_job=None,
        tenant=tenant,
        revision=manifest.revision,
    )
    try:
        with scope() as session:
            _check_free(session, name, tenant, overwrite)
            models = RegisteredModelRepository(session)
            before = models.registered(name)
            previous = before.revision if before is not None else None
            models.register(model)
    except BaseException:
        artifacts.delete_revision(store, name, manifest.revision)
        raise
    if previous is not None and previous != manifest.revision:
        try:
            artifacts.delete_revision(store, name, previous)
        except Exception:
            log.warning("could not remove the replaced revision %s of %s", previous, name, exc_info=True)
    return model


def _check_free(session: Session, name: str, tenant: str, overwrite: bool) -> None:
    registered = RegisteredModelRepository(session).registered(name)
    if registered is not None and registered.tenant != tenant:
        raise PushRefusedError(f"{name!r} is registered by tenant {registered.tenant!r}: pick another --name")
    if registered is not None and not overwrite:
        raise PushRefusedError(f"{name!r} is registered already: add --overwrite to replace it, or pick another --name")
    active = TrainingRepository(session).active_job_for_alias(name)
    if active is not None:
        raise PushRefusedError(f"training job {active.id} is producing {name!r}: wait for it or cancel it")
