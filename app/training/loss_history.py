"""The loss curve of a training job: one point per progress report, kept in the job's ``params``.

Stored under ``params["loss_history"]`` (a JSON list of ``{"step", "epoch", "loss"}``) rather than in a
table of its own: the curve is small, read whole, and only ever written by the job's one training worker.
"""

from __future__ import annotations

import math
from typing import Any

HISTORY_KEY = "loss_history"
# A report every few steps keeps thousands of points for long jobs; past this, older points are thinned.
MAX_POINTS = 1000

LossPoint = dict[str, Any]


def with_point(history: list[LossPoint], point: LossPoint, limit: int = MAX_POINTS) -> list[LossPoint]:
    """Return ``history`` with ``point`` appended, after dropping points at or past its step.

    A task that resumes from a checkpoint reports steps again: the later report replaces the earlier ones.
    At ``limit`` points the curve is thinned to one point per equal span of steps (about ``limit / 2`` of
    them), so a long job keeps its whole shape at an even, coarser resolution.
    """
    step = int(point["step"])
    kept = [p for p in history if int(p["step"]) < step]
    if len(kept) >= limit:
        kept = _thinned(kept, width=math.ceil(step / max(limit // 2, 1)))
    kept.append(point)
    return kept


def _thinned(points: list[LossPoint], width: int) -> list[LossPoint]:
    """Return the first point of each ``width``-step span that has one."""
    thinned: list[LossPoint] = []
    for p in points:
        if not thinned or int(p["step"]) // width != int(thinned[-1]["step"]) // width:
            thinned.append(p)
    return thinned


def history_of(params: dict[str, Any] | None) -> list[LossPoint]:
    """Return the loss points stored in a job's ``params``, oldest first (empty before the first report)."""
    return list((params or {}).get(HISTORY_KEY) or [])
