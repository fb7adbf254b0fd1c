"""Error answers render whatever value they quote: lone surrogates, NaN, undecodable bytes (issue 16)."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from app.core.error_rendering import http_error, printable, validation_error
from app.v1.errors import _reshaped

HOSTILE = {"surrogate": "a\ud800b", "nan": float("nan"), "inf": float("-inf"), "bytes": b"\xff\xfe", "ok": [1, "x"]}


def _request() -> Request:
    return Request({"type": "http", "method": "POST", "path": "/jobs", "headers": [], "query_string": b""})


def test_printable_keeps_what_json_can_hold_and_names_the_rest() -> None:
    assert printable(HOSTILE) == {
        "surrogate": "a\\ud800b",
        "nan": "nan",
        "inf": "-inf",
        "bytes": "\\xff\\xfe",
        "ok": [1, "x"],
    }


@pytest.mark.parametrize("value", list(HOSTILE.values()))
def test_a_422_quoting_a_hostile_input_renders(value: object) -> None:
    exc = RequestValidationError([{"type": "x", "loc": ("body", "key"), "msg": "bad", "input": value}])
    response = asyncio.run(validation_error(_request(), exc))
    assert response.status_code == 422
    body = json.loads(bytes(response.body))
    assert body["detail"][0]["loc"] == ["body", "key"]
    assert _reshaped(response).status_code == 422  # the /v1 reshaping renders it again


def test_an_http_error_with_a_surrogate_in_its_detail_renders() -> None:
    response = asyncio.run(http_error(_request(), HTTPException(409, detail="key 'x\udcff' is taken")))
    assert response.status_code == 409 and "\\udcff" in json.loads(bytes(response.body))["detail"]
