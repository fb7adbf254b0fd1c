"""Refuse, per request, the strings no tokenizer can read, before a request is pooled with others.

The API refuses NUL characters and lone surrogates in JSON bodies; this is the worker's own guard, for
whatever reaches the sync queue another way: a lone surrogate makes a fast tokenizer raise TypeError for
the whole pooled call, whoever sent the other inputs.
"""

from __future__ import annotations

from typing import Any

from workers.inference.ops import OpError, Payload


def unreadable_input(payload: Payload) -> OpError | None:
    """Return an OpError naming the first string of ``payload`` that holds NUL or a lone surrogate, or None."""
    for key, value in payload.items():
        found = _first_unreadable(value, str(key))
        if found is not None:
            where, problem = found
            return OpError(f"{where} {problem}: send valid Unicode text", param=str(key), code="invalid_input")
    return None


def _first_unreadable(value: Any, where: str) -> tuple[str, str] | None:
    if isinstance(value, str):
        return _problem(value, where)
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _first_unreadable(item, f"{where}[{i}]")
            if found is not None:
                return found
    if isinstance(value, dict):
        for key, item in value.items():
            found = _first_unreadable(item, f"{where}.{key}")
            if found is not None:
                return found
    return None


def _problem(text: str, where: str) -> tuple[str, str] | None:
    if "\x00" in text:
        return where, "holds a NUL character (\\u0000)"
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return where, f"holds a lone surrogate ({text[exc.start]!a} at character {exc.start})"
    return None
