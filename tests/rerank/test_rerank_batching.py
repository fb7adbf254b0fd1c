"""Rerank requests share the sync worker's dynamic batches, and one a batch cannot serve fails alone.

A real batcher and runner, a tiny cross-encoder in a models dir: requests wait together and run as one
batch of the ``score_pairs`` op, as concurrent /rerank requests do in a sync worker.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support.settings import SettingsEnv
from support.tiny_rerankers import make_tiny_reranker

from workers.inference.batcher import Delivery, DynamicBatcher
from workers.inference.ops import OpError, Payload, Result, weight_of
from workers.inference.runner import run_group
from workers.runtime import registry

WAIT = 120.0
MODEL = "acme/ce-batched"
QUERY = "where is the cat"
TEXTS = ["the cat is in the house", "a river", "the dog and the cat and the blue house", "music"]


@pytest.fixture
def models(tmp_path: Path, settings_env: SettingsEnv) -> Iterator[Path]:
    make_tiny_reranker(tmp_path / MODEL, "xlm-roberta", seed=7)
    settings_env.set(EMBEDQ_MODELS_DIR=str(tmp_path))
    yield tmp_path
    registry.unload_all()


def pooled(payloads: list[Payload]) -> list[Delivery]:
    """Run ``payloads`` as ONE batch of a real batcher (it waits until all have arrived) and return each Delivery."""
    gate = threading.Event()

    def gated_run(op: str, model: str, batch: list[Payload]) -> list[Result | OpError]:
        gate.wait(WAIT)
        return run_group(op, model, batch)

    # The batch closes once every payload's pairs have arrived (each weighs its texts, as in the worker).
    weights = [weight_of("score_pairs", p) for p in payloads]
    batcher = DynamicBatcher(gated_run, max_wait_s=WAIT, min_batch_size=sum(weights), max_batch_inputs=10_000)
    futures = [batcher.submit("score_pairs", MODEL, p, weight=w) for p, w in zip(payloads, weights, strict=True)]
    gate.set()
    return [future.result(timeout=WAIT) for future in futures]


def test_requests_share_a_batch_and_a_bad_one_fails_alone(models: Path) -> None:
    from sentence_transformers import CrossEncoder

    good = {"query": QUERY, "texts": TEXTS, "max_tokens": 512}
    too_long = {**good, "texts": ["cat " * 400], "truncate": False}
    unreadable = {**good, "texts": ["fine", "a\x00b"]}

    deliveries = pooled([good, too_long, {**good, "texts": TEXTS[:2]}, unreadable, good])

    assert {d.batch_requests for d in deliveries} == {5}, "the requests did not run as one batch"
    expected = CrossEncoder(str(models / MODEL)).predict([(QUERY, text) for text in TEXTS])
    for delivery, count in zip([deliveries[0], deliveries[2], deliveries[4]], [4, 2, 4], strict=True):
        assert isinstance(delivery.outcome, dict), delivery.outcome
        assert np.abs(np.array(delivery.outcome["scores"]) - expected[:count]).max() <= 1e-5
    refused, poisoned = deliveries[1].outcome, deliveries[3].outcome
    assert isinstance(refused, OpError) and refused.code == "input_too_long" and "texts[0]" in refused.message
    assert isinstance(poisoned, OpError) and poisoned.code == "invalid_input" and "texts[1]" in poisoned.message
