"""Run one op over a group of payloads for one model, so that one bad payload never fails the others."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

from app.core.store_outages import unavailable
from workers.inference.input_check import unreadable_input
from workers.inference.ops import OpError, Payload, RegisteredOp, Result, get_op

log = logging.getLogger(__name__)

Outcome = Result | OpError

# A text every tokenizer and model reads: when an op runs on it but not on a request's text, the text is at fault.
_CONTROL_TEXT = "hello world"

# One forward pass at a time per process: concurrent passes on one device only fight over its cores, and a
# fast tokenizer must not be called from two threads at once.
_engine = threading.Lock()


def run_group(op_name: str, model: str, payloads: list[Payload]) -> list[Outcome]:
    """Return one outcome per payload, in order: the op's result, or the OpError that rejects that payload."""
    outcomes: list[Outcome | None] = [unreadable_input(payload) for payload in payloads]
    readable = [i for i, outcome in enumerate(outcomes) if outcome is None]
    if readable:
        for i, outcome in zip(readable, _run_readable(op_name, model, [payloads[i] for i in readable]), strict=True):
            outcomes[i] = outcome
    return [outcome for outcome in outcomes if outcome is not None]


def _run_readable(op_name: str, model: str, payloads: list[Payload]) -> list[Outcome]:
    try:
        op = get_op(op_name)
        with _engine:
            encoder = _load(model)
            return _run(op, encoder, payloads)
    except OpError as exc:
        return [exc] * len(payloads)


def _load(model: str) -> object:
    # torch is imported here, in the process that runs the op, never in a prefork parent.
    from app.catalog.artifacts import ModelArtifactError
    from app.catalog.resolver import InvalidModelNameError, UnknownModelError
    from workers.runtime.pooling import UnsupportedModelError
    from workers.runtime.registry import get_encoder

    try:
        return get_encoder(model)
    except InvalidModelNameError as exc:
        raise OpError(str(exc), code="invalid_model", param="model") from exc
    except UnknownModelError as exc:
        raise OpError(str(exc), status=404, code="model_not_found", param="model") from exc
    except ModelArtifactError as exc:
        if unavailable(exc):
            raise _store_not_answering(model, exc) from exc
        # Its text names the model, the store key and what to do, never a server path.
        log.error("could not install model %s: %s", model, exc)
        raise OpError(str(exc), status=500, code="model_artifact_unavailable", param="model") from exc
    except UnsupportedModelError as exc:
        raise OpError(f"model {model!r} cannot be served: {exc}", code="unsupported_model", param="model") from exc
    except Exception as exc:
        if unavailable(exc):
            raise _store_not_answering(model, exc) from exc
        log.exception("could not load model %s", model)
        raise OpError(
            # The exception's text may name server paths: it goes to the worker's log only.
            f"the worker could not load model {model!r} ({type(exc).__name__}); see the worker's log",
            status=500,
            code="model_load_failed",
        ) from exc


def _store_not_answering(model: str, exc: Exception) -> OpError:
    """A 503: the artifact store a registered model is installed from does not answer; the caller may retry."""
    log.warning("could not install model %s: the artifact store does not answer (%s)", model, exc)
    return OpError(
        f"model {model!r} is not on this host yet and the artifact store it is installed from does not answer "
        "right now: try again shortly",
        status=503,
        code="model_store_unavailable",
        param="model",
    )


def _run(op: RegisteredOp, encoder: object, payloads: list[Payload]) -> list[Outcome]:
    try:
        results = op.run(encoder, payloads)  # type: ignore[arg-type]
        if len(results) != len(payloads):
            raise RuntimeError(f"op {op.name} returned {len(results)} results for {len(payloads)} payloads")
        return list(results)
    except OpError as exc:
        if len(payloads) == 1:
            return [exc]
    except Exception as exc:
        if len(payloads) == 1:
            log.exception("op %s failed", op.name)
            return [_failure(op, encoder, payloads[0], exc)]
    log.warning("op %s failed on a batch of %d payloads; running each alone", op.name, len(payloads))
    return [_run(op, encoder, [payload])[0] for payload in payloads]


def _failure(op: RegisteredOp, encoder: object, payload: Payload, exc: Exception) -> OpError:
    """Return the error of a payload the op raised on, alone.

    Every text of the payload (a string field, or each string of a list field) is replaced by a control
    text. When the op runs on that, the model works and an input is at fault: a 422 naming the first text
    that fails with controls everywhere else. Otherwise the model itself fails: a 500.
    """
    reason = f"{type(exc).__name__}: {exc}"
    controlled = _controlled(payload)
    if controlled and _runs(op, encoder, {**payload, **controlled}):
        where = next(
            (
                where
                for where, trial in _each_text_alone(payload)
                if not _runs(op, encoder, {**payload, **controlled, **trial})
            ),
            None,
        )
        return OpError(
            f"the model could not read {where or 'the input'} ({reason}): change that input",
            status=422,
            code="unreadable_input",
            param="input",
        )
    return OpError(f"op {op.name} failed ({reason}); see the worker's log", status=500, code="inference_failed")


def _controlled(payload: Payload) -> Payload:
    """Return the payload's text fields with the control text in place of each string (a list keeps one)."""
    controlled: Payload = {}
    for key, value in payload.items():
        if isinstance(value, str):
            controlled[key] = _CONTROL_TEXT
        elif isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            controlled[key] = [_CONTROL_TEXT]
    return controlled


def _each_text_alone(payload: Payload) -> Iterator[tuple[str, Payload]]:
    """Yield (where, fields) for each text of the payload: that text alone in its field."""
    for key, replacement in _controlled(payload).items():
        value = payload[key]
        if isinstance(replacement, str):
            yield key, {key: value}
        else:
            for i, item in enumerate(value):
                yield f"{key}[{i}]", {key: [item]}


def _runs(op: RegisteredOp, encoder: object, payload: Payload) -> bool:
    try:
        op.run(encoder, [payload])  # type: ignore[arg-type]
    except Exception:
        return False
    return True
