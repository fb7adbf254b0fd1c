"""``GET /v1/models``, ``GET /v1/models/{id}`` and ``DELETE /v1/models/{id}``: OpenAI's model list, model object and
model deletion (of registered models), with embedq's fields."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter

from app.catalog import deletion, model_cache, service
from app.catalog.access import MODEL_API_ERRORS, check_model, hidden_models, registered_revisions
from app.catalog.disclosure import model_for, models_for
from app.catalog.schemas import ModelDeleted, ModelList, ModelObject
from app.core.deps import SessionDep, SettingsDep
from app.keys.auth import PrincipalDep

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList)
async def list_models(settings: SettingsDep, principal: PrincipalDep) -> ModelList:
    """List every model a request may name: default, aliases, packaged, EMBEDQ_MODELS_DIR, and loaded ones."""
    loads = await anyio.to_thread.run_sync(service.read_loads, settings)
    hidden = await anyio.to_thread.run_sync(hidden_models, principal)
    registered = await anyio.to_thread.run_sync(registered_revisions, principal)
    listing = await anyio.to_thread.run_sync(service.list_models, settings, loads, hidden, registered)
    return models_for(principal, listing)


@router.get("/models/{model_id:path}", response_model=ModelObject, responses={404: {"description": "unknown model"}})
async def get_model(model_id: str, settings: SettingsDep, principal: PrincipalDep) -> ModelObject:
    """Describe one model (an alias or a name, `org/name` included): source, path, family, limits, loads."""
    loads = await anyio.to_thread.run_sync(service.read_loads, settings)
    resolved = await anyio.to_thread.run_sync(check_model, model_id, settings, principal, MODEL_API_ERRORS)
    return model_for(principal, await anyio.to_thread.run_sync(service.describe, model_id, resolved, settings, loads))


@router.delete(
    "/models/{model_id:path}",
    response_model=ModelDeleted,
    responses={404: {"description": "no such registered model"}, 409: {"description": "not a registered model"}},
)
def delete_model(model_id: str, session: SessionDep, settings: SettingsDep, principal: PrincipalDep) -> ModelDeleted:
    """Delete a fine-tuned or pushed model: its alias stops resolving on every host, its files leave the store."""
    removed = deletion.unregister(session, model_id, settings, principal)
    session.commit()
    model_cache.forget(model_id)
    deletion.remove_files(removed, settings)
    return ModelDeleted(id=model_id)
