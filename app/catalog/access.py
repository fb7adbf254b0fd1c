"""Which model names a caller may use: fine-tuned aliases belong to the tenant that trained them.

Another tenant's alias answers exactly as a name nobody registered would, and is left out of every list of
known models, so its existence is never confirmed. Admins (and everyone when auth is off) see every alias.
``check_model`` is the one model check every API makes; each API style passes its ``ModelErrors``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.catalog.families import detect_family
from app.catalog.repository import RegisteredModelRepository
from app.catalog.resolver import InvalidModelNameError, ResolvedModel, UnknownModelError, known_models, resolve_model
from app.catalog.tasks import NotAnEmbeddingModelError, require_embedding
from app.core.config import Settings
from app.core.db import session_scope
from app.core.errors import EmbedqError, InvalidRequestError, NotFoundError
from app.core.security import Principal


@dataclass(frozen=True)
class ModelErrors:
    """How one API style answers a model name it cannot use: the error for a malformed name and for an unknown one.

    ``list_known``: the unknown-name error carries ``known``, the names the caller may use instead.
    """

    invalid: type[EmbedqError]
    unknown: type[EmbedqError]
    list_known: bool = False


JOB_API_ERRORS = ModelErrors(invalid=InvalidRequestError, unknown=InvalidRequestError, list_known=True)
"""Jobs, collections and fine-tuning: 422 ``invalid_request`` for either, naming the known models."""


class ModelNotFoundError(NotFoundError):
    """A model name no one serves: 404 ``model_not_found``, OpenAI's code on /v1/models and /v1/embeddings."""

    code = "model_not_found"


MODEL_API_ERRORS = ModelErrors(invalid=EmbedqError, unknown=ModelNotFoundError)
"""``/v1/models``, reranking and the hybrid endpoints: 400 for a malformed name, 404 for an unknown one."""


def check_model(
    name: str, settings: Settings, principal: Principal, errors: ModelErrors, session: Session | None = None
) -> ResolvedModel:
    """Return what ``name`` resolves to if ``principal`` may use it, else raise the API style's error."""
    try:
        return resolve_visible(name, settings, principal, session)
    except InvalidModelNameError as exc:
        raise errors.invalid(str(exc), param="model") from exc
    except UnknownModelError as exc:
        extra = {"known": exc.known} if errors.list_known else {}
        raise errors.unknown(str(exc), param="model", **extra) from exc


def check_embedding_model(
    name: str, settings: Settings, principal: Principal, errors: ModelErrors, session: Session | None = None
) -> ResolvedModel:
    """Return ``check_model``'s answer if the model gives vectors; a reranker raises the API style's invalid error."""
    resolved = check_model(name, settings, principal, errors, session)
    try:
        require_embedding(resolved.name, resolved.path, detect_family(resolved.name, resolved.path, resolved.family))
    except NotAnEmbeddingModelError as exc:
        raise errors.invalid(str(exc), param="model") from exc
    return resolved


def hidden_models(principal: Principal, session: Session | None = None) -> set[str]:
    """Return the aliases ``principal`` may not see (empty for an admin, without a query)."""
    if principal.is_admin:
        return set()
    if session is not None:
        return RegisteredModelRepository(session).names_hidden_from(principal)
    with session_scope() as own:
        return RegisteredModelRepository(own).names_hidden_from(principal)


def resolve_visible(
    name: str, settings: Settings, principal: Principal, session: Session | None = None
) -> ResolvedModel:
    """Resolve ``name`` as ``resolve_model`` does, raising UnknownModelError for another tenant's alias too.

    A registered model that this host has not installed resolves too, as source "artifact": the API needs no
    model files, the worker that serves it installs it from the artifact store.
    """
    hidden = hidden_models(principal, session)
    try:
        if name in hidden:
            raise UnknownModelError(name, known_models(settings), settings.models_dir)
        return _resolve_or_registered(name, settings, session)
    except UnknownModelError as exc:
        if not hidden:
            raise
        raise UnknownModelError(name, [k for k in exc.known if k not in hidden], settings.models_dir) from None


def _resolve_or_registered(name: str, settings: Settings, session: Session | None) -> ResolvedModel:
    try:
        return resolve_model(name, settings)
    except UnknownModelError:
        revision = registered_revision(name, session)
        if revision is None:
            raise
        return ResolvedModel(name=name, path=None, source="artifact", revision=revision)


def registered_revision(name: str, session: Session | None = None) -> str | None:
    """Return the artifact store revision of registered model ``name``, or None if it has none."""
    if session is not None:
        row = RegisteredModelRepository(session).registered(name)
        return row.revision if row is not None else None
    with session_scope() as own:
        row = RegisteredModelRepository(own).registered(name)
        return row.revision if row is not None else None


def registered_revisions(principal: Principal) -> dict[str, str]:
    """Return the registered models ``principal`` may use that live in the artifact store, name to revision."""
    with session_scope() as session:
        models = RegisteredModelRepository(session).list_registered(principal)
        return {model.name: model.revision for model in models if model.revision is not None}
