"""``GET /v1/models`` and ``GET /v1/models/{id}``: OpenAI's model list and model object, with embedq's fields."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter

from app.catalog import service
from app.catalog.access import MODEL_API_ERRORS, check_model, hidden_models
from app.catalog.disclosure import model_for, models_for
from app.catalog.schemas import ModelList, ModelObject
from app.core.deps import SettingsDep
from app.keys.auth import PrincipalDep

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList)
async def list_models(settings: SettingsDep, principal: PrincipalDep) -> ModelList:
    """List every model a request may name: default, aliases, packaged, EMBEDQ_MODELS_DIR, and loaded ones."""
    loads = await anyio.to_thread.run_sync(service.read_loads, settings)
    hidden = await anyio.to_thread.run_sync(hidden_models, principal)
    return models_for(principal, await anyio.to_thread.run_sync(service.list_models, settings, loads, hidden))


@router.get("/models/{model_id:path}", response_model=ModelObject, responses={404: {"description": "unknown model"}})
async def get_model(model_id: str, settings: SettingsDep, principal: PrincipalDep) -> ModelObject:
    """Describe one model (an alias or a name, `org/name` included): source, path, family, limits, loads."""
    loads = await anyio.to_thread.run_sync(service.read_loads, settings)
    resolved = await anyio.to_thread.run_sync(check_model, model_id, settings, principal, MODEL_API_ERRORS)
    return model_for(principal, await anyio.to_thread.run_sync(service.describe, model_id, resolved, settings, loads))
