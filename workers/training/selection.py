"""Best-checkpoint selection and early stopping over the evaluations a run makes during training.

Each evaluation's MRR@10 after a training step is compared with the best so far; a better one saves its
weights, and ``patience`` evaluations in a row without one stop the run. The base (step 0) is evaluated as
the reference but is no candidate: a fine-tune always registers trained weights, and its held-out metrics
beside the base's say whether training helped. The state travels in the periodic checkpoint,
so a resumed run keeps its best-so-far; best weights written after that checkpoint are dropped on resume,
since the resumed run replays those steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from workers.training import checkpoints
from workers.training.evaluation import SELECTION_METRIC


@dataclass
class Selection:
    folder: Path
    patience: int
    best_step: int | None = None
    best_score: float = -math.inf
    since_best: int = 0
    durable_best: int | None = None  # the best step the last written checkpoint names

    @classmethod
    def resumed(cls, folder: Path, patience: int, state: dict[str, Any] | None) -> Selection:
        """Return the selection a checkpoint saved (or a fresh one), dropping best weights newer than it."""
        selection = cls(folder, patience)
        if state:
            selection.best_step = state["best_step"]
            selection.best_score = float(state["best_score"])
            selection.since_best = int(state["since_best"])
            selection.durable_best = selection.best_step
        checkpoints.prune_best(folder, {selection.best_step})
        return selection

    def consider(self, step: int, metrics: dict[str, Any], model: nn.Module) -> None:
        """Record an evaluation after ``step`` steps; save the weights if it is the best so far."""
        score = float(metrics[SELECTION_METRIC])
        if self.best_step is not None and score <= self.best_score:
            self.since_best += 1
            return
        self.best_step, self.best_score, self.since_best = step, score, 0
        checkpoints.save_best(self.folder, step, model)
        checkpoints.prune_best(self.folder, {step, self.durable_best})

    @property
    def exhausted(self) -> bool:
        """Whether ``patience`` evaluations in a row brought nothing better (never with patience 0)."""
        return self.patience > 0 and self.since_best >= self.patience

    def state(self) -> dict[str, Any] | None:
        """Return what a checkpoint keeps of the selection (and mark its best weights as the ones to keep)."""
        if self.best_step is None:
            return None
        self.durable_best = self.best_step
        checkpoints.prune_best(self.folder, {self.best_step})
        return {"best_step": self.best_step, "best_score": self.best_score, "since_best": self.since_best}

    def restore_best(self, model: nn.Module) -> None:
        """Put the best weights back into ``model``."""
        assert self.best_step is not None
        checkpoints.restore_weights(model, checkpoints.load_best(self.folder, self.best_step))
