"""Deleting a registered model (fine-tuned or pushed): its row, then its files in the artifact store and here.

The row goes first, in the request's transaction: from its commit on, no API accepts the name and every worker
drops its copy at its next look (``app.catalog.model_cache``). The files go after the commit, so a failed
commit never leaves a registered model without files; files a failure leaves behind are only storage.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from sqlalchemy.orm import Session

from app.artifacts.store import ArtifactStore
from app.catalog import artifacts
from app.catalog.access import resolve_visible
from app.catalog.repository import RegisteredModelRepository
from app.catalog.resolver import InvalidModelNameError, UnknownModelError, validate_model_name
from app.core.config import Settings
from app.core.errors import ConflictError, EmbedqError, NotFoundError
from app.core.security import Principal
from app.models.registered_model import RegisteredModel

log = logging.getLogger(__name__)


def unregister(session: Session, name: str, settings: Settings, principal: Principal) -> RegisteredModel:
    """Remove registered model ``name`` of the caller's tenant (any tenant's for an admin); return its row.

    404 for a name nothing registered (or another tenant's), 409 for a model that registration did not create.
    """
    try:
        validate_model_name(name)
    except InvalidModelNameError as exc:
        raise EmbedqError(str(exc), param="model") from exc
    models = RegisteredModelRepository(session)
    row = models.registered(name)
    if row is None or not principal.sees(row.tenant):
        if row is None and _resolves(name, settings, principal, session):
            raise ConflictError(
                f"model {name!r} was not registered by fine-tuning or `embedq models push`, so it cannot be deleted "
                "here: remove its folder from EMBEDQ_MODELS_DIR (or its mapping from EMBEDQ_MODEL_MAPPING)",
                param="model",
            )
        raise NotFoundError(f"no registered model {name!r}: GET /fine-tuned-models lists them", param="model")
    _refuse_if_used(models, name, principal)
    removed = models.delete(name)
    assert removed is not None
    session.expunge(removed)
    return removed


def _refuse_if_used(models: RegisteredModelRepository, name: str, principal: Principal) -> None:
    """409 while a collection embeds with the model, a job waits for it or a LoRA adapter stands on it: their
    searches, uploads and embeddings would fail, and the freed name could be registered by another tenant,
    whose model they would then use."""
    collections, jobs = models.users(name)
    adapters = models.adapters_over(name)
    if not collections and not jobs and not adapters:
        return
    shown = [c if t == principal.tenant else f"{t}/{c}" for t, c in collections if principal.sees(t)]
    others = len(collections) - len(shown)
    parts = []
    if shown:
        parts.append(f"collections {', '.join(repr(c) for c in shown)} embed with it: re-embed them with another "
                     "model (POST /collections/{name}/reembed) or delete them first")  # fmt: skip
    if others:
        parts.append(f"{others} collection(s) of other tenants embed with it")
    if jobs:
        parts.append(f"{jobs} queued or running job(s) use it: wait for them or cancel them")
    if adapters:  # their weights are deltas over this model's: without it they load nothing
        parts.append(f"LoRA adapter(s) {', '.join(map(repr, adapters))} were trained over it: delete them first")
    raise ConflictError(f"model {name!r} is in use: " + "; ".join(parts), param="model")


def remove_files(model: RegisteredModel, settings: Settings) -> None:
    """Remove every revision of ``model`` from the artifact store, and this host's copy of it."""
    try:
        artifacts.delete_model(ArtifactStore.from_settings(settings), model.name)
    except Exception:
        log.warning("could not remove %s from the artifact store; its files stay there", model.name, exc_info=True)
    if settings.models_dir is None:
        return
    target = settings.models_dir / model.name
    if artifacts.local_revision(target) is not None:
        artifacts.remove_installed(settings.models_dir, model.name, settings.artifact_download_wait_s)
    elif Path(model.path) == target:  # registered before the artifact store: its only copy is the trained folder
        shutil.rmtree(target, ignore_errors=True)


def _resolves(name: str, settings: Settings, principal: Principal, session: Session) -> bool:
    try:
        resolve_visible(name, settings, principal, session)
    except (UnknownModelError, InvalidModelNameError):
        return False
    return True
