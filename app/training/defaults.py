"""Epochs and learning rate for a request that names neither, chosen from the data and the method.

The rule (the fine-tuning guide shows the measurements behind it):

- epochs: enough for ``EMBEDQ_TRAINING_DEFAULT_MIN_STEPS`` steps (a few hundred pairs otherwise get one
  short epoch, too few steps to move a strong base model), at most ``EMBEDQ_TRAINING_DEFAULT_MAX_EPOCHS``;
  evaluation during training keeps the best step and early stopping ends a run that stopped improving, so
  a few epochs too many cost time, not quality;
- learning rate: a full fine-tune takes 5e-5 below ``SMALL_DATA_PAIRS`` training pairs and 2e-5 above; a
  LoRA adapter starts at zero and moves through few weights, so it takes ten times that (5e-4 / 2e-4).
"""

from __future__ import annotations

import math

SMALL_DATA_PAIRS = 10_000
_RATES = {"full": (5e-5, 2e-5), "lora": (5e-4, 2e-4)}


def default_epochs(steps_per_epoch: int, min_steps: int, max_epochs: int) -> int:
    """Return the fewest epochs that make ``min_steps`` steps, between 1 and ``max_epochs``."""
    return max(1, min(max_epochs, math.ceil(min_steps / max(steps_per_epoch, 1))))


def default_learning_rate(method: str, train_pairs: int) -> float:
    """Return the learning rate for ``method`` ("full" or "lora") on ``train_pairs`` training pairs."""
    small, large = _RATES[method]
    return small if train_pairs < SMALL_DATA_PAIRS else large
