"""Validate a batch input file line by line, as OpenAI does, and cut its requests into tasks by a token budget.

Each line must be a JSON object ``{"custom_id": str, "method": "POST", "url": "/v1/embeddings", "body": {...}}``;
custom_ids are unique within the file and the file holds at most EMBEDQ_BATCH_MAX_LINES requests. A line that
breaks one of these rules fails the whole batch, named by its line number (1-based), as does a line the JSON
checks of every request body refuse (NUL or a lone surrogate in a string, NaN or Infinity, nesting deeper than
EMBEDQ_MAX_JSON_DEPTH, a string longer than EMBEDQ_MAX_JSON_STRING_CHARS: Postgres could not store it, or the
parser would not return). What the body asks for
(empty input, an unknown model, too many tokens) is checked later, per request: a bad body fails only its own
request, in the error file. Blank lines are skipped, as OpenAI skips them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app.core.limits import check_json_values

ENDPOINT = "/v1/embeddings"
# Errors kept on a failed batch (its errors.data): enough to fix a file, bounded for a file of garbage.
ERRORS_SHOWN = 1000
# The budget's estimate: an input of N characters costs about N / 4 tokens, plus its special tokens.
CHARS_PER_TOKEN = 4
SPECIAL_TOKENS = 2


@dataclass(frozen=True)
class LineError:
    """Why line ``line`` (1-based; None for the file as a whole) fails the batch."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True)
class ParsedRequest:
    """One valid line: its number, custom_id and the body to send to /v1/embeddings."""

    line: int
    custom_id: str
    body: dict[str, Any]


@dataclass
class Validation:
    """What a file held: its requests, or the errors that fail it (at most ERRORS_SHOWN, and how many in all)."""

    requests: list[ParsedRequest] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    error_count: int = 0

    def fail(self, error: LineError) -> None:
        self.error_count += 1
        if len(self.errors) < ERRORS_SHOWN:
            self.errors.append(error)


@dataclass(frozen=True)
class LineLimits:
    """What a file and each of its lines may hold (EMBEDQ_BATCH_MAX_LINES, the JSON limits of a request body)."""

    max_lines: int
    max_json_depth: int
    max_json_string_chars: int


def validate_lines(lines: Iterable[bytes], limits: LineLimits) -> Validation:
    """Return the requests of a JSONL file given as raw lines, or every error that fails it."""
    max_lines = limits.max_lines
    result = Validation()
    seen: dict[str, int] = {}
    count = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        count += 1
        if count > max_lines:
            result.fail(
                LineError(
                    "too_many_requests",
                    f"the file holds more than {max_lines} requests (EMBEDQ_BATCH_MAX_LINES): split it into "
                    "several batches",
                    number,
                )
            )
            break
        parsed = _parse_line(raw, number, limits)
        if isinstance(parsed, LineError):
            result.fail(parsed)
            continue
        first = seen.setdefault(parsed.custom_id, number)
        if first != number:
            result.fail(
                LineError(
                    "duplicate_custom_id",
                    f"custom_id {parsed.custom_id!r} is also the custom_id of line {first}: give every request "
                    "its own custom_id",
                    number,
                    "custom_id",
                )
            )
            continue
        result.requests.append(parsed)
    if count == 0:
        result.fail(LineError("empty_file", "the file holds no requests: one JSON object per line"))
    return result


def _parse_line(raw: bytes, number: int, limits: LineLimits) -> ParsedRequest | LineError:
    refused = check_json_values(raw, limits.max_json_depth, limits.max_json_string_chars, what="the line")
    if refused is not None:
        return LineError(refused.code, refused.message, number)
    try:
        obj = json.loads(raw)
    except UnicodeDecodeError as exc:
        return LineError(
            "invalid_json_line", f"the line is not UTF-8 (byte {exc.start}): save the file as UTF-8", number
        )
    except ValueError as exc:
        return LineError("invalid_json_line", f"the line is not valid JSON ({exc}): one JSON object per line", number)
    if not isinstance(obj, dict):
        return LineError(
            "invalid_json_line",
            f"the line is a JSON {type(obj).__name__}, not an object with custom_id, method, url and body",
            number,
        )
    for name in ("custom_id", "method", "url", "body"):
        if name not in obj:
            return LineError("missing_required_parameter", f"the line has no {name!r}: add it", number, name)
    custom_id, method, url, body = obj["custom_id"], obj["method"], obj["url"], obj["body"]
    if not isinstance(custom_id, str) or not custom_id:
        return LineError("invalid_custom_id", "custom_id must be a non-empty string", number, "custom_id")
    if method != "POST":
        return LineError("invalid_method", f"method is {method!r}: every request is 'POST'", number, "method")
    if url != ENDPOINT:
        return LineError(
            "invalid_url",
            f"url is {url!r}, but this batch's endpoint is {ENDPOINT}: send other endpoints in a batch of their own "
            f"(embedq's batches run {ENDPOINT} only)",
            number,
            "url",
        )
    if not isinstance(body, dict):
        return LineError("invalid_body", "body must be a JSON object: the /v1/embeddings request", number, "body")
    return ParsedRequest(number, custom_id, body)


def estimated_tokens(body: dict[str, Any]) -> int:
    """Return about how many tokens a request body costs (token ids counted, text at 4 characters a token)."""
    value = body.get("input")
    items = (
        [value]
        if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], int))
        else value
    )
    if not isinstance(items, list):
        return SPECIAL_TOKENS
    total = 0
    for item in items:
        if isinstance(item, str):
            total += len(item) // CHARS_PER_TOKEN + SPECIAL_TOKENS
        elif isinstance(item, list):
            total += len(item) + SPECIAL_TOKENS
        else:
            total += SPECIAL_TOKENS
    return max(total, 1)


def chunk_starts(requests: list[ParsedRequest], budget: int) -> list[int]:
    """Return the first line of each task: consecutive requests of about ``budget`` tokens (one at least)."""
    starts: list[int] = []
    spent = budget
    for request in requests:
        cost = estimated_tokens(request.body)
        if spent + cost > budget and spent > 0:
            starts.append(request.line)
            spent = 0
        spent += cost
    return starts
