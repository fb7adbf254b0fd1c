"""The operations a sync worker runs, by name: each maps a loaded Encoder and a batch of payloads to results.

An op receives a LIST of request payloads (the dynamic batcher coalesces requests for the same op and model)
and returns one result per payload, in order: a JSON-able dict, or an ``OpError`` that rejects that payload
alone. Register one with ``@register_op("name", weight=...)`` in a module listed in ``OP_MODULES``::

    @register_op("embed", weight=lambda payload: len(payload["texts"]))
    def embed(encoder: Encoder, payloads: list[dict[str, Any]]) -> list[dict[str, Any] | OpError]: ...

``weight`` is how many inputs a payload holds; the batcher stops pooling at EMBEDQ_MAX_BATCH_INPUTS inputs.
If an op raises instead, the runner re-runs each payload of the batch alone so one bad request cannot fail
the others; a payload that still raises while the op reads a control text is a 422 naming its text. Op
modules are imported in the process that runs them (never a prefork parent): keep torch
imports inside functions or in modules only they import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.runtime.encoder import Encoder

Payload = dict[str, Any]
Result = dict[str, Any]
Op = Callable[["Encoder", list[Payload]], list["Result | OpError"]]
Weight = Callable[[Payload], int]

# Modules whose import registers ops; append yours.
OP_MODULES: tuple[str, ...] = (
    "workers.inference.embed_ops",
    "workers.inference.hybrid_ops",
    "workers.inference.rerank_ops",
)


class OpError(Exception):
    """A payload an op rejects, reported to its caller with an HTTP status (4xx: the caller must change it)."""

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param

    def to_wire(self) -> dict[str, Any]:
        """Return the JSON-able form the API turns back into an error response."""
        return {"message": self.message, "status": self.status, "code": self.code, "param": self.param}


@dataclass(frozen=True)
class RegisteredOp:
    """An op and how many inputs each of its payloads holds."""

    name: str
    run: Op
    weight: Weight


_REGISTRY: dict[str, RegisteredOp] = {}


def _one(_: Payload) -> int:
    return 1


def register_op(name: str, *, weight: Weight = _one) -> Callable[[Op], Op]:
    """Return a decorator that registers an op under ``name``; registering a name twice is a bug."""

    def decorate(run: Op) -> Op:
        if name in _REGISTRY and _REGISTRY[name].run is not run:
            raise ValueError(f"op {name!r} is already registered by {_REGISTRY[name].run.__module__}")
        _REGISTRY[name] = RegisteredOp(name, run, weight)
        return run

    return decorate


def load_ops() -> None:
    """Import every module of ``OP_MODULES`` so their ops are registered (idempotent)."""
    for module in OP_MODULES:
        importlib.import_module(module)


def get_op(name: str) -> RegisteredOp:
    """Return the op registered as ``name``, or raise an OpError naming the ones that exist."""
    load_ops()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise OpError(
            f"unknown inference op {name!r}; this worker runs: {', '.join(sorted(_REGISTRY))}. "
            "Upgrade the worker if the API is newer",
            code="unknown_op",
        ) from None


def weight_of(name: str, payload: Payload) -> int:
    """Return how many inputs ``payload`` holds for op ``name`` (1 for an op that is not registered)."""
    try:
        op = get_op(name)
    except OpError:
        return 1
    try:
        return max(1, int(op.weight(payload)))
    except Exception:  # a malformed payload weighs 1; the op itself rejects it with a message
        return 1
