"""The lines of a batch's output and error files, in OpenAI's format.

Every line is ``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}``. A 200's
body is exactly what POST /v1/embeddings answers for the same request (``encoding_format`` honoured); a
request that failed has its status and OpenAI error body; a request never run (the batch was cancelled,
expired or failed first) has ``response: null`` and an ``error`` saying why. Ids are derived from the batch
and the custom_id, so a finalize delivered twice writes the same bytes.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import orjson

from app.batches.repository import ResultRow
from app.v1.service import embedding_items

NOT_RUN = 0
"""The status code of a request that never ran."""

_IDS = uuid.UUID("4f1c3c58-9d1e-4c8b-a1b4-0e6b7d2f5a10")

NOT_RUN_ERRORS = {
    "cancelled": ("batch_cancelled", "the batch was cancelled before this request ran"),
    "expired": ("batch_expired", "this request could not be executed before the completion window expired"),
    "failed": ("batch_failed", "the batch failed before this request ran"),
}


def line_of(batch_id: str, row: ResultRow) -> bytes:
    """Return one JSONL line (newline included) for a result."""
    key = uuid.uuid5(_IDS, f"{batch_id}/{row.custom_id}").hex
    line: dict[str, Any] = {"id": f"batch_req_{key}", "custom_id": row.custom_id}
    if row.status_code == NOT_RUN:
        line["response"] = None
        line["error"] = row.error
    else:
        line["response"] = {"status_code": row.status_code, "request_id": f"req_{key}", "body": _body(row)}
        line["error"] = None
    return orjson.dumps(line) + b"\n"


def _body(row: ResultRow) -> dict[str, Any]:
    if row.vectors is None:
        return row.error or {}
    vectors = np.frombuffer(row.vectors, dtype="<f4").reshape(-1, row.dimension or 0)
    tokens = row.prompt_tokens or 0
    return {
        "object": "list",
        "data": embedding_items(vectors, row.encoding_format or "float"),
        "model": row.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def is_output(row: ResultRow) -> bool:
    """Return whether a result belongs in the output file (a 2xx), else in the error file."""
    return 200 <= row.status_code < 300
