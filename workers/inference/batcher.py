"""Dynamic batching: requests that wait together run together, in one op call per (op, model).

A request is submitted from any thread (the sync task, on the worker's consumer thread) and gets a future,
resolved on the batcher's thread (the sync task's reply goes out from a done-callback). One batcher thread
takes the first waiting request, then keeps taking requests until the batch holds
``min_batch_size`` inputs or ``max_wait_s`` has passed since the first (whatever is already waiting is
always taken at once, up to ``max_batch_inputs`` inputs), runs the batch and hands each request its outcome.
While a batch runs, new requests pile up and form the next batch: under load batches grow by themselves,
and an idle worker answers a lone request after at most ``max_wait_s``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from workers.inference.ops import OpError, Payload, Result

log = logging.getLogger(__name__)

RunGroup = Callable[[str, str, list[Payload]], list["Result | OpError"]]
"""(op, model, payloads) -> one outcome per payload, in order."""


@dataclass(frozen=True)
class Delivery:
    """A request's outcome and the size of the batch it ran in."""

    outcome: Result | OpError
    batch_requests: int
    batch_inputs: int


@dataclass
class _Request:
    op: str
    model: str
    payload: Payload
    weight: int
    deadline: float | None
    future: Future[Delivery] = field(default_factory=Future)


class DynamicBatcher:
    """Coalesces concurrent requests into batches run by one thread; ``submit`` is safe from any thread."""

    def __init__(
        self,
        run_group: RunGroup,
        *,
        max_wait_s: float,
        min_batch_size: int,
        max_batch_inputs: int,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._run_group = run_group
        self.max_wait_s = max_wait_s
        self.min_batch_size = min_batch_size
        self.max_batch_inputs = max_batch_inputs
        self._wall_clock = wall_clock
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._carry: _Request | None = None
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(
        self, op: str, model: str, payload: Payload, *, weight: int = 1, deadline: float | None = None
    ) -> Future[Delivery]:
        """Return a future of the request's Delivery; ``deadline`` (epoch seconds) drops it unrun once passed."""
        request = _Request(op, model, payload, max(1, weight), deadline)
        self._ensure_thread()
        self._queue.put(request)
        return request.future

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="embedq-batcher", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            batch = self.collect()
            try:
                self.run(batch)
            except Exception as exc:  # never let the thread die with callers waiting
                log.exception("batch of %d requests failed", len(batch))
                for request in batch:
                    if not request.future.done():
                        failure = OpError(f"batch failed: {exc}", status=500, code="inference_failed")
                        request.future.set_result(Delivery(failure, len(batch), 0))

    def collect(self) -> list[_Request]:
        """Return the next batch: block for a first request, then gather others as described above."""
        first = self._carry if self._carry is not None else self._queue.get()
        self._carry = None
        batch, inputs = [first], first.weight
        wait_until = time.monotonic() + self.max_wait_s
        while inputs < self.max_batch_inputs:
            wait = wait_until - time.monotonic() if inputs < self.min_batch_size else 0.0
            try:
                request = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if inputs + request.weight > self.max_batch_inputs:
                self._carry = request
                break
            batch.append(request)
            inputs += request.weight
        return batch

    def run(self, batch: list[_Request]) -> None:
        """Run ``batch`` one (op, model) group at a time and resolve every request's future."""
        now = self._wall_clock()
        live: list[_Request] = []
        for request in batch:
            if request.deadline is not None and now > request.deadline:
                expired = OpError("the caller stopped waiting before the request ran", status=504, code="timeout")
                request.future.set_result(Delivery(expired, 0, 0))
            else:
                live.append(request)
        groups: dict[tuple[str, str], list[_Request]] = {}
        for request in live:
            groups.setdefault((request.op, request.model), []).append(request)
        for (op, model), requests in groups.items():
            inputs = sum(r.weight for r in requests)
            started = time.perf_counter()
            outcomes = self._run_group(op, model, [r.payload for r in requests])
            log.debug(
                "ran %s on %s: %d requests, %d inputs in %.1f ms",
                op,
                model,
                len(requests),
                inputs,
                (time.perf_counter() - started) * 1000,
            )
            for request, outcome in zip(requests, outcomes, strict=True):
                request.future.set_result(Delivery(outcome, len(requests), inputs))


@dataclass(frozen=True)
class BatcherSettings:
    """How a DynamicBatcher pools requests; ``off()`` runs each request alone, in arrival order."""

    max_wait_s: float
    min_batch_size: int
    max_batch_inputs: int

    @classmethod
    def off(cls) -> BatcherSettings:
        return cls(max_wait_s=0.0, min_batch_size=1, max_batch_inputs=1)


_batchers: dict[tuple[int, BatcherSettings], DynamicBatcher] = {}
_batchers_lock = threading.Lock()


def process_batcher(run_group: RunGroup, settings: BatcherSettings) -> DynamicBatcher:
    """Return this process's batcher for ``settings``, made on first use (again in a forked child).

    A sync worker runs every op on its batcher's one thread, model loads included, with batching off as well:
    torch's OpenMP runtime (libgomp) keeps a team of threads per calling thread, and once two threads have
    used torch there are more OpenMP threads than cores, so idle ones sleep instead of spinning. Measured on
    2 cores with MiniLM and one short input: a forward pass on a second thread took 15-17 ms, on the thread
    that also loaded the model 5-6 ms.
    """
    key = (os.getpid(), settings)
    with _batchers_lock:
        batcher = _batchers.get(key)
        if batcher is None:
            batcher = _batchers[key] = DynamicBatcher(
                run_group,
                max_wait_s=settings.max_wait_s,
                min_batch_size=settings.min_batch_size,
                max_batch_inputs=settings.max_batch_inputs,
            )
        return batcher
