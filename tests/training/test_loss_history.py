"""The stored loss curve of a training job: replaced steps on resume, even thinning past the limit."""

from __future__ import annotations

import itertools

from app.training.loss_history import history_of, with_point


def point(step: int, loss: float = 1.0) -> dict[str, float | int]:
    return {"step": step, "epoch": step / 100, "loss": loss}


def test_a_report_replaces_the_steps_it_redoes() -> None:
    history = [point(s) for s in (5, 10, 15)]
    assert [p["step"] for p in with_point(history, point(10, 0.5))] == [5, 10]
    assert with_point(history, point(10, 0.5))[-1]["loss"] == 0.5
    assert history_of({"loss_history": history}) == history and history_of({}) == [] and history_of(None) == []


def test_a_long_job_keeps_an_evenly_thinned_curve_within_the_limit() -> None:
    history: list[dict[str, float | int]] = []
    for step in range(5, 25_001, 5):  # 5000 reports
        history = with_point(history, point(step), limit=100)
        assert len(history) <= 100
    steps = [p["step"] for p in history]
    assert steps == sorted(steps) and steps[0] == 5 and steps[-1] == 25_000
    assert len(steps) >= 50
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    # Even: no stretch of the run is left with a gap wider than a few times the typical one.
    assert max(gaps) <= 4 * sorted(gaps)[len(gaps) // 2]
