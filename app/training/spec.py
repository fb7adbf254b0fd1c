"""The contract between the training service (app) and the trainer (workers): what to train, and the hooks back.

The service owns the database; the trainer owns torch. The trainer reports through ``TrainingHooks`` and asks
them, between steps, whether to stop.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from app.training.pairs import Pair


class StopReason(StrEnum):
    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class TrainingQuality:
    """The operator's settings behind mining, evaluation during training and the held-out intervals."""

    mining_candidates: int = 20
    mining_relative_margin: float = 0.05
    mining_max_similarity: float = 0.95
    evals_per_run: int = 10
    bootstrap_resamples: int = 1000


@dataclass(frozen=True)
class TrainingSpec:
    """One training job as the trainer needs it; ``base_path`` is None only for a Hub model."""

    job_id: uuid.UUID
    method: str  # "full" | "lora"
    base_model: str
    base_path: Path | None
    train_pairs: list[Pair]
    eval_pairs: list[Pair]
    hyperparams: dict[str, Any]
    checkpoint_dir: Path
    output_dir: Path
    progress_every_steps: int
    checkpoint_every_steps: int
    base_eval: dict[str, Any] | None = None
    quality: TrainingQuality = field(default_factory=TrainingQuality)


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    epoch: float
    loss: float | None
    seconds_per_step: float | None
    eta_seconds: float | None


@dataclass
class TrainingResult:
    """How a run ended: ``stopped`` is None when it finished and saved its model to ``spec.output_dir``."""

    steps: int
    stopped: StopReason | None = None
    dimension: int | None = None
    eval: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False  # nothing was trained or saved: ``eval`` holds the base's metrics and the mining's
    best_step: int | None = None  # the step whose weights were saved, when evaluated during training
    stopped_early: bool = False


class TrainingHooks(Protocol):
    def started(self, total_steps: int, resumed_from_step: int | None) -> None: ...

    def report(self, progress: Progress) -> None: ...

    def evaluated(self, name: str, metrics: dict[str, Any]) -> None: ...

    def evaluated_at(self, step: int, epoch: float, metrics: dict[str, Any], best_step: int | None) -> None:
        """One evaluation during training (step 0: the base), and the best trained step so far."""
        ...

    def nearest_chunks(self, vectors: np.ndarray, k: int) -> list[list[str]]:
        """The texts of the ``k`` chunks nearest each vector in the mining collection (hard_negatives.from)."""
        ...

    def checkpointed(self, step: int, path: Path) -> None: ...

    def should_stop(self) -> StopReason | None: ...


TrainFn = Callable[[TrainingSpec, TrainingHooks], TrainingResult]
"""Runs one training job to its end or to a stop; raises on failure."""
