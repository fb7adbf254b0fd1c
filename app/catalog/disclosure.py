"""What a model description shows a key that is not admin: no server paths, host names or pids (issue 16)."""

from __future__ import annotations

from app.catalog.schemas import ModelList, ModelObject
from app.core.security import Principal


def model_for(principal: Principal, model: ModelObject) -> ModelObject:
    """Return ``model`` as ``principal`` may see it: an admin all of it, a tenant without path and workers."""
    if principal.is_admin:
        return model
    loads = [load.model_copy(update={"worker": None}) for load in model.loads]
    return model.model_copy(update={"path": None, "loads": loads})


def models_for(principal: Principal, models: ModelList) -> ModelList:
    """Return ``models`` with each model as ``principal`` may see it (``model_for``)."""
    return models.model_copy(update={"data": [model_for(principal, m) for m in models.data]})
