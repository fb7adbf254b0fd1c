"""Fine-tuning state: one run per training job (its settings, progress and evaluation) and its pairs."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base


class TrainingRun(Base):
    """What a fine-tuning job trains and how far it got; the job row itself carries status, progress and errors."""

    __tablename__ = "training_runs"

    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    method: Mapped[str] = mapped_column(String(8))
    alias: Mapped[str] = mapped_column(String(200))
    base_model: Mapped[str] = mapped_column(String(512))
    overwrite: Mapped[bool] = mapped_column(Boolean, default=False)
    hyperparams: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    pairs: Mapped[int] = mapped_column(Integer, default=0)
    with_negatives: Mapped[int] = mapped_column(Integer, default=0)
    skipped_lines: Mapped[int] = mapped_column(Integer, default=0)
    skipped_examples: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    epoch: Mapped[float] = mapped_column(Float, default=0.0)
    loss: Mapped[float | None] = mapped_column(Float)
    eta_seconds: Mapped[float | None] = mapped_column(Float)
    seconds_per_step: Mapped[float | None] = mapped_column(Float)
    eval: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    checkpoint_step: Mapped[int | None] = mapped_column(Integer)
    resumed_from_step: Mapped[int | None] = mapped_column(Integer)


class TrainingPair(Base):
    """One (query, positive[, hard negative]) example of a training job, in upload order."""

    __tablename__ = "training_pairs"

    job_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    query: Mapped[str] = mapped_column(Text)
    positive: Mapped[str] = mapped_column(Text)
    negative: Mapped[str | None] = mapped_column(Text)
