"""The CLI's one-line progress of a job says what its counts count: documents, inputs, steps or requests."""

from __future__ import annotations

import pytest

from app.cli.client_commands import describe_progress


@pytest.mark.parametrize(
    ("kind", "unit"),
    [("fine_tune", "steps"), ("fine_tune_lora", "steps"), ("embeddings", "inputs"), ("batch", "requests"),
     ("reembed", "documents")],
)  # fmt: skip
def test_a_job_s_counts_are_named_by_its_kind(kind: str, unit: str) -> None:
    job = {"kind": kind, "status": "running", "counts": {"done": 40, "failed": 0, "total": 96}, "progress": 41.7}
    assert describe_progress(job) == f"running   40/96 {unit} | 42%"
