"""The evaluation curve of a training job: the held-out metrics of each evaluation during training.

Kept in the job's ``params`` next to the loss curve (``params["eval_history"]``, a JSON list of
``{"step", "epoch", "recall@1", "recall@10", "mrr@10"}``, step 0 being the base model) with the best step so
far under ``params["best_step"]``. A resumed job evaluates its replayed steps again: later points replace
earlier ones at or past their step, as in ``loss_history``.
"""

from __future__ import annotations

from typing import Any

from app.training.loss_history import with_point

HISTORY_KEY = "eval_history"
BEST_STEP_KEY = "best_step"
METRICS = ("recall@1", "recall@10", "mrr@10")

EvalPoint = dict[str, Any]

__all__ = ["BEST_STEP_KEY", "HISTORY_KEY", "METRICS", "EvalPoint", "best_step_of", "history_of", "with_point"]


def history_of(params: dict[str, Any] | None) -> list[EvalPoint]:
    """Return the evaluation points stored in a job's ``params``, oldest first."""
    return list((params or {}).get(HISTORY_KEY) or [])


def best_step_of(params: dict[str, Any] | None) -> int | None:
    """Return the step of the best evaluation so far, or None before the first."""
    value = (params or {}).get(BEST_STEP_KEY)
    return int(value) if value is not None else None
