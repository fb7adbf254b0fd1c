"""Training checkpoints: the trainable weights, optimizer, scheduler and RNG after a step, in one file.

Written to a temporary file and renamed over the previous one, so a crash mid-write leaves the last
complete checkpoint in place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE_FILE = "state.pt"


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
) -> Path:
    """Write the state after ``step`` steps to ``folder``/state.pt atomically; return the file."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / STATE_FILE
    partial = folder / (STATE_FILE + ".partial")
    torch.save(
        {
            "step": step,
            "weights": trainable_state(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
        },
        partial,
    )
    os.replace(partial, target)
    return target


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
    weights: dict[str, torch.Tensor] = checkpoint.state["weights"]
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(weights) != set(parameters):
        raise RuntimeError(
            "the checkpoint's trainable weights do not match this model's: it was written by a different "
            "setup; cancel the job and start a new one"
        )
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(weights[name].to(parameter.device))
    optimizer.load_state_dict(checkpoint.state["optimizer"])
    scheduler.load_state_dict(checkpoint.state["scheduler"])
    torch.set_rng_state(checkpoint.state["rng"])
