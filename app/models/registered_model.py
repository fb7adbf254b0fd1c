"""Model aliases that fine-tuning jobs registered: what each is, where its folder is, and which job made it."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, func
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base
from app.models.api_key import DEFAULT_TENANT


class RegisteredModelKind(StrEnum):
    FULL = "full"
    LORA = "lora"


class RegisteredModel(Base):
    """A model served by alias: a full model folder, or a LoRA adapter folder over ``base``."""

    __tablename__ = "registered_models"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    # Only this tenant (and admins) can see and embed with the alias; aliases are one namespace (folders).
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT)
    base: Mapped[str] = mapped_column(String(512))
    kind: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    dimension: Mapped[int] = mapped_column(Integer)
    # The artifact store revision (models/<name>/@<revision>/) every host serves; None: trained before the store.
    revision: Mapped[str | None] = mapped_column(String(64), default=None)
    created_by_job: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
