"""One poisoned request in a pooled batch fails alone, with a 4xx naming its input (issue 16, point 2).

A real batcher and runner on the packaged MiniLM: the poisoned request and the good ones (another
tenant's, as far as the worker can tell: it pools whatever the sync queue brings) wait together and
run as one batch, through the ops behind /v1/embeddings, search queries and /tokenize.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from app.core.config import DEFAULT_MODEL
from workers.inference.batcher import Delivery, DynamicBatcher
from workers.inference.ops import OpError, Payload, Result, register_op
from workers.inference.runner import run_group

WAIT = 120.0


@register_op("test_fragile_tokenizer")
def _fragile(_: Any, payloads: list[Payload]) -> list[Result | OpError]:
    # Stands for a tokenizer that raises on an input it cannot read, for the whole pooled call.
    for payload in payloads:
        if "poison" in payload["texts"]:
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
    return [{"n": len(payload["texts"])} for payload in payloads]


def pooled(op: str, payloads: list[Payload]) -> list[Delivery]:
    """Run ``payloads`` as ONE batch of a real batcher (it waits until all have arrived) and return each Delivery."""
    gate = threading.Event()

    def gated_run(op_name: str, model: str, batch: list[Payload]) -> list[Result | OpError]:
        gate.wait(WAIT)
        return run_group(op_name, model, batch)

    batcher = DynamicBatcher(gated_run, max_wait_s=WAIT, min_batch_size=len(payloads), max_batch_inputs=10_000)
    futures = [batcher.submit(op, DEFAULT_MODEL, payload, weight=1) for payload in payloads]
    gate.set()
    return [future.result(timeout=WAIT) for future in futures]


GOOD = [{"texts": ["alpha beta"]}, {"texts": ["gamma", "delta"]}, {"texts": ["epsilon"]}]


@pytest.mark.parametrize(
    ("op", "extra"),
    [("embed", {}), ("embed", {"is_query": True}), ("tokenize", {})],
    ids=["embeddings", "search-query", "tokenize"],
)
@pytest.mark.parametrize("poison", ["\ud800", "a\x00b"], ids=["lone-surrogate", "nul"])
def test_a_poisoned_request_fails_alone_and_names_its_input(op: str, extra: dict, poison: str) -> None:
    payloads = [{**p, **extra} for p in GOOD]
    payloads.insert(1, {"texts": ["fine", poison], **extra})
    deliveries = pooled(op, payloads)
    assert {d.batch_requests for d in deliveries} == {4}, "the requests did not run as one batch"
    bad = deliveries.pop(1).outcome
    assert isinstance(bad, OpError) and 400 <= bad.status < 500
    assert bad.message.startswith("texts[1] holds") and bad.param == "texts", bad.message
    for delivery in deliveries:
        assert not isinstance(delivery.outcome, OpError), delivery.outcome.message


def test_an_op_that_raises_on_one_input_fails_that_request_alone_naming_the_text() -> None:
    payloads = [{"texts": ["a"]}, {"texts": ["b", "c", "poison"]}, {"texts": ["d", "e"]}]
    first, bad, last = pooled("test_fragile_tokenizer", payloads)
    assert (first.outcome, last.outcome) == ({"n": 1}, {"n": 2})
    assert isinstance(bad.outcome, OpError) and bad.outcome.status == 422 and bad.outcome.code == "unreadable_input"
    assert "texts[2]" in bad.outcome.message and "TypeError" in bad.outcome.message


def test_a_lone_request_the_op_raises_on_is_a_422_when_the_model_reads_a_control_text() -> None:
    # Alone in its batch (or with batching off): the control text shows the model works.
    (alone,) = pooled("test_fragile_tokenizer", [{"texts": ["poison"]}])
    assert isinstance(alone.outcome, OpError) and alone.outcome.status == 422
    assert "texts[0]" in alone.outcome.message


@register_op("test_broken_model")
def _broken(_: Any, payloads: list[Payload]) -> list[Result | OpError]:
    raise RuntimeError("CUDA error: device-side assert triggered")


def test_when_the_model_fails_on_everything_it_is_a_500() -> None:
    outcomes = [d.outcome for d in pooled("test_broken_model", [{"texts": ["a"]}, {"texts": ["b"]}])]
    assert all(isinstance(o, OpError) and o.status == 500 and o.code == "inference_failed" for o in outcomes)


@register_op("test_fragile_rerank")
def _fragile_rerank(_: Any, payloads: list[Payload]) -> list[Result | OpError]:
    # A pair scorer (the rerank op's payload shape) whose tokenizer raises on an input it cannot read.
    for payload in payloads:
        if "poison" in [payload["query"], *payload["candidates"]]:
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
    return [{"scores": [0.5] * len(payload["candidates"])} for payload in payloads]


@pytest.mark.parametrize(
    ("query", "candidates", "named"),
    [("q", ["a", "poison", "b"], "candidates[1]"), ("poison", ["a", "b"], "query")],
    ids=["candidate", "query"],
)
def test_a_rerank_request_the_op_raises_on_fails_alone_naming_its_text(
    query: str, candidates: list[str], named: str
) -> None:
    good = [{"query": "x", "candidates": ["y"]}, {"query": "z", "candidates": ["w", "v"]}]
    first, bad, last = pooled("test_fragile_rerank", [good[0], {"query": query, "candidates": candidates}, good[1]])
    assert (first.outcome, last.outcome) == ({"scores": [0.5]}, {"scores": [0.5, 0.5]})
    assert isinstance(bad.outcome, OpError) and bad.outcome.status == 422 and bad.outcome.code == "unreadable_input"
    assert f"could not read {named} (TypeError" in bad.outcome.message, bad.outcome.message
