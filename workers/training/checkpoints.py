"""Training checkpoints: the trainable weights, optimizer, scheduler and RNG after a step, in one file.

Written to a temporary file and renamed over the previous one, so a crash mid-write leaves the last
complete checkpoint in place. Next to it: the best-scoring weights so far (``best-<step>.pt``, the step
the checkpoint's selection state names, plus a newer one written since), and the mined training triples
(``mined.json``), so a resumed job trains on the same data and keeps its best-so-far.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.training.pairs import Pair

STATE_FILE = "state.pt"
BEST_PREFIX = "best-"
MINED_FILE = "mined.json"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    state: dict[str, Any]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the parameters that training changes (all of them for a full fine-tune, the adapter's for LoRA)."""
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if p.requires_grad}


def save(
    folder: Path,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    selection: dict[str, Any] | None = None,
) -> Path:
    """Write the state after ``step`` steps (and the best-checkpoint selection's) to ``folder``/state.pt
    atomically; return the file."""
    state = {
        "step": step,
        "weights": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "selection": selection,
    }
    return _save_atomically(state, folder / STATE_FILE)


def _save_atomically(state: dict[str, Any], target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, target)
    return target


def save_best(folder: Path, step: int, model: nn.Module) -> Path:
    """Write the trainable weights after ``step`` steps as the best so far; return the file."""
    return _save_atomically({"step": step, "weights": trainable_state(model)}, folder / f"{BEST_PREFIX}{step}.pt")


def load_best(folder: Path, step: int) -> dict[str, torch.Tensor]:
    """Return the best weights saved at ``step``; raises FileNotFoundError if they are gone."""
    return torch.load(folder / f"{BEST_PREFIX}{step}.pt", map_location="cpu", weights_only=True)["weights"]


def prune_best(folder: Path, keep: set[int | None]) -> None:
    """Remove the best-weights files of every step not in ``keep``."""
    for path in folder.glob(f"{BEST_PREFIX}*.pt"):
        step = path.stem.removeprefix(BEST_PREFIX)
        if not step.isdigit() or int(step) not in keep:
            path.unlink(missing_ok=True)


def save_mined(folder: Path, pairs: list[Pair], stats: dict[str, Any]) -> None:
    """Keep the mined training pairs and their statistics for a resumed run."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [[p.query, p.positive, p.negative] for p in pairs]
    partial = folder / (MINED_FILE + ".partial")
    partial.write_text(json.dumps({"pairs": rows, "stats": stats}))
    os.replace(partial, folder / MINED_FILE)


def load_mined(folder: Path) -> tuple[list[Pair], dict[str, Any]] | None:
    """Return the pairs and statistics an earlier delivery of the job mined, or None."""
    path = folder / MINED_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return [Pair(q, p, n) for q, p, n in data["pairs"]], data["stats"]


def load(folder: Path) -> Checkpoint | None:
    """Return the last complete checkpoint in ``folder``, or None if there is none."""
    target = folder / STATE_FILE
    if not target.is_file():
        return None
    state = torch.load(target, map_location="cpu", weights_only=True)
    return Checkpoint(step=int(state["step"]), state=state)


def restore(
    checkpoint: Checkpoint,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """Put the checkpoint's weights, optimizer, scheduler and RNG state back; refuse one from another setup."""
    restore_weights(model, checkpoint.state["weights"])
    optimizer.load_state_dict(checkpoint.state["optimizer"])
    scheduler.load_state_dict(checkpoint.state["scheduler"])
    torch.set_rng_state(checkpoint.state["rng"])


def restore_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy ``weights`` into the model's trainable parameters; refuse weights of another setup."""
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(weights) != set(parameters):
        raise RuntimeError(
            "the checkpoint's trainable weights do not match this model's: it was written by a different "
            "setup; cancel the job and start a new one"
        )
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(weights[name].to(parameter.device))
