"""Which model names a caller may use: fine-tuned aliases belong to the tenant that trained them.

Another tenant's alias answers exactly as a name nobody registered would, and is left out of every list of
known models, so its existence is never confirmed. Admins (and everyone when auth is off) see every alias.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.catalog.resolver import ResolvedModel, UnknownModelError, known_models, resolve_model
from app.core.config import Settings
from app.core.db import session_scope
from app.core.security import Principal
from app.training.repository import TrainingRepository


def hidden_models(principal: Principal, session: Session | None = None) -> set[str]:
    """Return the aliases ``principal`` may not see (empty for an admin, without a query)."""
    if principal.is_admin:
        return set()
    if session is not None:
        return TrainingRepository(session).names_hidden_from(principal)
    with session_scope() as own:
        return TrainingRepository(own).names_hidden_from(principal)


def resolve_visible(
    name: str, settings: Settings, principal: Principal, session: Session | None = None
) -> ResolvedModel:
    """Resolve ``name`` as ``resolve_model`` does, raising UnknownModelError for another tenant's alias too."""
    hidden = hidden_models(principal, session)
    if not hidden:
        return resolve_model(name, settings)
    try:
        if name in hidden:
            raise UnknownModelError(name, known_models(settings), settings.models_dir)
        return resolve_model(name, settings)
    except UnknownModelError as exc:
        raise UnknownModelError(name, [k for k in exc.known if k not in hidden], settings.models_dir) from None
