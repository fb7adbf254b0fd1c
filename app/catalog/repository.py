"""All SQL about registered model aliases: the ones fine-tuning jobs registered, and who may see them."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from app.core.security import Principal, visible_to
from app.models.collection import Collection, CollectionVersion, VersionStatus
from app.models.job import Job, JobStatus
from app.models.registered_model import RegisteredModel, RegisteredModelKind


class RegisteredModelRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def registered(self, name: str) -> RegisteredModel | None:
        """Return the alias ``name``, or None if nothing registered it."""
        return self.session.get(RegisteredModel, name)

    def list_registered(self, principal: Principal) -> list[RegisteredModel]:
        """Return the aliases ``principal`` may see, by name."""
        return list(
            self.session.scalars(
                select(RegisteredModel)
                .where(visible_to(principal, RegisteredModel.tenant))
                .order_by(RegisteredModel.name)
            )
        )

    def names_hidden_from(self, principal: Principal) -> set[str]:
        """Return the aliases of other tenants' fine-tuned models (none for an admin)."""
        if principal.is_admin:
            return set()
        return set(self.session.scalars(select(RegisteredModel.name).where(RegisteredModel.tenant != principal.tenant)))

    def list_all(self) -> list[RegisteredModel]:
        """Return every registered alias, by name (for the operator's tools)."""
        return list(self.session.scalars(select(RegisteredModel).order_by(RegisteredModel.name)))

    def adapters_over(self, name: str) -> list[str]:
        """Return the registered LoRA aliases trained over ``name``, by name."""
        return list(
            self.session.scalars(
                select(RegisteredModel.name)
                .where(
                    RegisteredModel.base == name,
                    RegisteredModel.kind == RegisteredModelKind.LORA.value,  # a full fine-tune over it stands alone
                    RegisteredModel.name != name,
                )
                .order_by(RegisteredModel.name)
            )
        )

    def users(self, name: str) -> tuple[list[tuple[str, str]], int]:
        """Return (tenant, collection) of each collection whose active or building version embeds with ``name``,
        and how many queued or running jobs name it."""
        collections = self.session.execute(
            select(Collection.tenant, Collection.name)
            .join(CollectionVersion, CollectionVersion.collection_id == Collection.id)
            .where(
                CollectionVersion.model == name,
                CollectionVersion.status.in_((VersionStatus.ACTIVE.value, VersionStatus.BUILDING.value)),
            )
            .distinct()
            .order_by(Collection.tenant, Collection.name)
        ).all()
        active = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
        jobs = self.session.scalar(select(func.count()).where(Job.model == name, Job.status.in_(active)))
        return [(tenant, collection) for tenant, collection in collections], int(jobs or 0)

    def delete(self, name: str) -> RegisteredModel | None:
        """Remove the alias ``name`` and return what it was, or None if nothing registered it."""
        model = self.session.get(RegisteredModel, name, with_for_update=True)
        if model is not None:
            self.session.delete(model)
            self.session.flush()
        return model

    def register(self, model: RegisteredModel) -> None:
        """Insert the alias, or replace every field of an existing one (an overwrite)."""
        values = {
            "name": model.name,
            "base": model.base,
            "kind": model.kind,
            "path": model.path,
            "dimension": model.dimension,
            "created_by_job": model.created_by_job,
            "tenant": model.tenant,
            "revision": model.revision,
        }
        statement = pg_insert(RegisteredModel).values(**values)
        self.session.execute(
            statement.on_conflict_do_update(
                index_elements=[RegisteredModel.name],
                set_={**{k: statement.excluded[k] for k in values if k != "name"}, "created_at": func.now()},
            )
        )
