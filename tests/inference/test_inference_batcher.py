"""The worker's dynamic batcher and op runner, in-process: coalescing, limits, deadlines, isolation of bad requests."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from workers.inference.batcher import Delivery, DynamicBatcher
from workers.inference.ops import OpError, RegisteredOp
from workers.inference.runner import _run

WAIT = 30.0  # generous: only a broken batcher makes a test wait this long


class RecordingRun:
    """A run_group that records each batch and, when gated, holds the first one until released."""

    def __init__(self, gated: bool = False) -> None:
        self.calls: list[tuple[str, str, list[dict[str, Any]]]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        if not gated:
            self.release.set()

    def __call__(self, op: str, model: str, payloads: list[dict[str, Any]]) -> list[dict[str, Any] | OpError]:
        self.calls.append((op, model, payloads))
        self.started.set()
        self.release.wait(WAIT)
        return [OpError("bad", param="input") if p.get("bad") else {"echo": p["n"]} for p in payloads]


def batcher(run: RecordingRun, **limits: Any) -> DynamicBatcher:
    options = {"max_wait_s": 0.0, "min_batch_size": 1, "max_batch_inputs": 64, **limits}
    return DynamicBatcher(run, **options)


def outcomes(futures: list[Any]) -> list[Delivery]:
    return [f.result(timeout=WAIT) for f in futures]


def test_requests_that_wait_while_a_batch_runs_form_the_next_batch_and_get_their_own_results() -> None:
    run = RecordingRun(gated=True)
    b = batcher(run)
    first = b.submit("embed", "m", {"n": 0})
    assert run.started.wait(WAIT)
    rest = [b.submit("embed", "m", {"n": n}) for n in range(1, 9)]
    run.release.set()
    deliveries = outcomes([first, *rest])
    assert [d.outcome for d in deliveries] == [{"echo": n} for n in range(9)]
    assert [len(payloads) for _, _, payloads in run.calls] == [1, 8]
    assert [d.batch_requests for d in deliveries] == [1] + [8] * 8


def test_a_batch_stops_at_max_batch_inputs_and_the_next_request_starts_the_following_batch() -> None:
    run = RecordingRun(gated=True)
    b = batcher(run, max_batch_inputs=10)
    b.submit("embed", "m", {"n": 0})
    assert run.started.wait(WAIT)
    futures = [b.submit("embed", "m", {"n": n}, weight=4) for n in range(1, 6)]
    big = b.submit("embed", "m", {"n": 99}, weight=25)
    run.release.set()
    deliveries = outcomes([*futures, big])
    assert [len(payloads) for _, _, payloads in run.calls] == [1, 2, 2, 1, 1]
    assert [d.batch_inputs for d in deliveries] == [8, 8, 8, 8, 4, 25]
    assert deliveries[-1].outcome == {"echo": 99}


def test_an_idle_batcher_waits_up_to_max_wait_for_min_batch_size_inputs() -> None:
    run = RecordingRun()
    b = batcher(run, max_wait_s=WAIT, min_batch_size=3)
    futures = [b.submit("embed", "m", {"n": 0})]
    time.sleep(0.2)  # well inside max_wait: the batcher is still collecting
    futures += [b.submit("embed", "m", {"n": n}) for n in (1, 2)]
    assert [d.batch_requests for d in outcomes(futures)] == [3, 3, 3]
    assert len(run.calls) == 1


def test_without_min_batch_size_a_lone_request_runs_at_once() -> None:
    run = RecordingRun()
    b = batcher(run, max_wait_s=WAIT, min_batch_size=1)
    assert b.submit("embed", "m", {"n": 7}).result(timeout=WAIT / 3).outcome == {"echo": 7}


def test_requests_for_other_ops_or_models_run_in_their_own_groups() -> None:
    run = RecordingRun(gated=True)
    b = batcher(run)
    b.submit("embed", "a", {"n": 0})
    assert run.started.wait(WAIT)
    futures = [
        b.submit("embed", "a", {"n": 1}),
        b.submit("embed", "b", {"n": 2}),
        b.submit("tokenize", "a", {"n": 3}),
        b.submit("embed", "a", {"n": 4}),
    ]
    run.release.set()
    assert [d.outcome for d in outcomes(futures)] == [{"echo": n} for n in (1, 2, 3, 4)]
    groups = [(op, model, [p["n"] for p in payloads]) for op, model, payloads in run.calls[1:]]
    assert groups == [("embed", "a", [1, 4]), ("embed", "b", [2]), ("tokenize", "a", [3])]


def test_a_request_past_its_deadline_is_answered_504_without_running() -> None:
    run = RecordingRun(gated=True)
    b = batcher(run)
    b.submit("embed", "m", {"n": 0})
    assert run.started.wait(WAIT)
    expired = b.submit("embed", "m", {"n": 1}, deadline=time.time() - 1)
    live = b.submit("embed", "m", {"n": 2}, deadline=time.time() + 3600)
    run.release.set()
    gone, kept = outcomes([expired, live])
    assert isinstance(gone.outcome, OpError) and gone.outcome.status == 504
    assert kept.outcome == {"echo": 2}
    assert [[p["n"] for p in payloads] for _, _, payloads in run.calls] == [[0], [2]]


def test_one_rejected_request_does_not_touch_the_others_in_its_batch() -> None:
    run = RecordingRun(gated=True)
    b = batcher(run)
    b.submit("embed", "m", {"n": 0})
    assert run.started.wait(WAIT)
    futures = [b.submit("embed", "m", {"n": n, "bad": n == 2}) for n in range(1, 4)]
    run.release.set()
    first, bad, third = (d.outcome for d in outcomes(futures))
    assert first == {"echo": 1} and third == {"echo": 3}
    assert isinstance(bad, OpError) and bad.param == "input"


def test_the_batcher_survives_a_run_group_that_raises() -> None:
    calls = []

    def explode(op: str, model: str, payloads: list[dict[str, Any]]) -> list[Any]:
        calls.append(len(payloads))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return [{"ok": True} for _ in payloads]

    b = DynamicBatcher(explode, max_wait_s=0, min_batch_size=1, max_batch_inputs=8)
    failed = b.submit("embed", "m", {}).result(timeout=WAIT)
    assert isinstance(failed.outcome, OpError) and failed.outcome.status == 500 and "boom" in failed.outcome.message
    assert b.submit("embed", "m", {}).result(timeout=WAIT).outcome == {"ok": True}


def _op(run: Any) -> RegisteredOp:
    return RegisteredOp("test", run, lambda _: 1)


def test_runner_reruns_each_payload_alone_when_an_op_raises_on_the_batch() -> None:
    seen: list[int] = []

    def fragile(_: object, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        seen.append(len(payloads))
        if any(p["n"] == 2 for p in payloads):
            raise ValueError("cannot handle 2")
        return [{"double": p["n"] * 2} for p in payloads]

    results = _run(_op(fragile), object(), [{"n": n} for n in range(4)])
    assert seen == [4, 1, 1, 1, 1]
    assert results[0] == {"double": 0} and results[3] == {"double": 6}
    failure = results[2]
    assert isinstance(failure, OpError) and failure.status == 500 and "cannot handle 2" in failure.message


def test_runner_reports_a_single_payload_op_error_as_is() -> None:
    def reject(_: object, payloads: list[dict[str, Any]]) -> list[Any]:
        raise OpError("input[0] is too long", param="input", code="input_too_long")

    (result,) = _run(_op(reject), object(), [{}])
    assert isinstance(result, OpError) and (result.status, result.code) == (400, "input_too_long")


@pytest.mark.parametrize("returned", [[], [{"a": 1}, {"b": 2}]])
def test_runner_refuses_an_op_that_returns_the_wrong_number_of_results(returned: list[Any]) -> None:
    (result,) = _run(_op(lambda _, payloads: returned), object(), [{}])
    assert isinstance(result, OpError) and result.status == 500 and "returned" in result.message
