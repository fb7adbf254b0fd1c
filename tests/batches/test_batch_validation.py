"""Validation of batch input files, line by line, and how the requests are cut into tasks (no services)."""

from __future__ import annotations

import json

import pytest

from app.batches.validation import LineLimits, ParsedRequest, chunk_starts, estimated_tokens, validate_lines


def limits(max_lines: int) -> LineLimits:
    return LineLimits(max_lines, max_json_depth=32, max_json_string_chars=1000)


def line(custom_id: object = "a", **overrides: object) -> bytes:
    obj = {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": {"input": "hi"}}
    obj.update(overrides)
    return json.dumps(obj).encode() + b"\n"


def test_a_valid_file_gives_every_request_with_its_line_number() -> None:
    checked = validate_lines([line("a"), b"\n", line("b", body={"input": ["x", "y"], "model": "m"})], limits(10))
    assert checked.errors == []
    assert checked.requests == [
        ParsedRequest(1, "a", {"input": "hi"}),
        ParsedRequest(3, "b", {"input": ["x", "y"], "model": "m"}),
    ]


@pytest.mark.parametrize(
    ("raw", "code", "param", "needle"),
    [
        (b"{not json\n", "invalid_json_line", None, "not valid JSON"),
        (b"\xff\xfe{}\n", "invalid_json_line", None, "not UTF-8"),
        (b"[1, 2]\n", "invalid_json_line", None, "JSON list, not an object"),
        (json.dumps({"method": "POST", "url": "/v1/embeddings", "body": {}}).encode(), "missing_required_parameter",
         "custom_id", "no 'custom_id'"),
        (json.dumps({"custom_id": "a", "url": "/v1/embeddings", "body": {}}).encode(), "missing_required_parameter",
         "method", "no 'method'"),
        (json.dumps({"custom_id": "a", "method": "POST", "body": {}}).encode(), "missing_required_parameter",
         "url", "no 'url'"),
        (json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/embeddings"}).encode(),
         "missing_required_parameter", "body", "no 'body'"),
        (line(7), "invalid_custom_id", "custom_id", "non-empty string"),
        (line(""), "invalid_custom_id", "custom_id", "non-empty string"),
        (line(method="GET"), "invalid_method", "method", "'GET'"),
        (line(url="/v1/chat/completions"), "invalid_url", "url", "'/v1/chat/completions'"),
        (line(body=["hi"]), "invalid_body", "body", "JSON object"),
        # What every request body is refused for: Postgres cannot store it, or the parser would not return.
        (line(body={"input": "a\x00b"}), "nul_character", None, "NUL"),
        (line("a\x00"), "nul_character", None, "NUL"),
        (line(body={"input": "\ud800"}), "invalid_unicode", None, "lone surrogate"),
        (line("\udfff"), "invalid_unicode", None, "lone surrogate"),
        (line(body={"input": "hi", "dimensions": float("nan")}), "invalid_number", None, "'NaN'"),
        (line(body={"input": "x" * 1001}), "string_too_long", None, "at most 1000"),
        (b'{"custom_id": "a", "body": {"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}", "json_too_deep", None,
         "the line nests deeper than 32 levels"),
    ],
)  # fmt: skip
def test_each_broken_line_fails_the_batch_with_its_number_code_and_fix(
    raw: bytes, code: str, param: str | None, needle: str
) -> None:
    checked = validate_lines([line("ok"), raw], limits(10))
    assert len(checked.errors) == 1, checked.errors
    error = checked.errors[0]
    assert (error.line, error.code, error.param) == (2, code, param)
    assert needle in error.message


def test_a_repeated_custom_id_names_the_line_that_used_it_first() -> None:
    checked = validate_lines([line("a"), line("b"), line("a")], limits(10))
    [error] = checked.errors
    assert (error.line, error.code) == (3, "duplicate_custom_id")
    assert "also the custom_id of line 1" in error.message


def test_more_lines_than_the_limit_fail_at_the_first_line_over_it() -> None:
    checked = validate_lines([line(str(i)) for i in range(5)], limits(3))
    [error] = checked.errors
    assert (error.line, error.code) == (4, "too_many_requests")
    assert "EMBEDQ_BATCH_MAX_LINES" in error.message


def test_an_empty_file_fails() -> None:
    checked = validate_lines([b"\n", b"  \n"], limits(10))
    [error] = checked.errors
    assert (error.line, error.code) == (None, "empty_file")


def test_every_error_is_reported_not_only_the_first() -> None:
    checked = validate_lines([b"x\n", line("a"), b"y\n", line("a")], limits(10))
    assert [(e.line, e.code) for e in checked.errors] == [
        (1, "invalid_json_line"),
        (3, "invalid_json_line"),
        (4, "duplicate_custom_id"),
    ]


def test_tokens_are_estimated_from_characters_and_token_ids() -> None:
    assert estimated_tokens({"input": "x" * 40}) == 12
    assert estimated_tokens({"input": ["x" * 40, "y" * 4]}) == 12 + 3
    assert estimated_tokens({"input": [1, 2, 3]}) == 5
    assert estimated_tokens({"input": [[1, 2], [3]]}) == 4 + 3
    assert estimated_tokens({}) == 2


def test_requests_are_cut_into_tasks_by_the_token_budget() -> None:
    requests = [ParsedRequest(i, str(i), {"input": "x" * 36}) for i in range(1, 8)]  # 11 tokens each
    assert chunk_starts(requests, 33) == [1, 4, 7]
    assert chunk_starts(requests, 5) == [1, 2, 3, 4, 5, 6, 7]  # over the budget alone: a task of its own
    assert chunk_starts(requests, 10_000) == [1]
