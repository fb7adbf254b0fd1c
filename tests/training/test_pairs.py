"""Training pairs from TSV and JSONL text: what is kept, what is skipped and counted, and the hold-out split."""

from __future__ import annotations

import json

import pytest

from app.training.pairs import Pair, eval_count, format_for_filename, parse_pairs, planned_steps, split_pairs


def test_tsv_pairs_and_hard_negatives_with_malformed_lines_counted() -> None:
    text = (
        "what is a cat\ta small feline\n"
        "\n"  # blank: not data, not counted
        "no tab on this line\n"
        "q2\tp2\tn2\n"
        "too\tmany\tfields\there\n"
        "\tempty query\n"
        "q3\tp3\r\n"
        "q4\tp4\t\n"
    )
    parsed = parse_pairs(text)
    assert parsed.pairs == [Pair("what is a cat", "a small feline"), Pair("q2", "p2", "n2"), Pair("q3", "p3")]
    assert parsed.skipped == 4
    assert [e["line"] for e in parsed.skipped_examples] == [3, 5, 6, 8]
    assert "found 1 field" in str(parsed.skipped_examples[0]["reason"])
    assert "empty negative" in str(parsed.skipped_examples[3]["reason"])


def test_jsonl_pairs_detected_from_the_first_line() -> None:
    lines = [
        json.dumps({"query": "q1", "positive": "p1"}),
        json.dumps({"query": "q2", "positive": "p2", "negative": "n2"}),
        "not json",
        json.dumps(["a", "list"]),
        json.dumps({"query": "q3"}),
        json.dumps({"query": "q4", "positive": "p4", "negative": 5}),
        json.dumps({"query": "q5", "positive": "p5", "negative": None}),
    ]
    parsed = parse_pairs("\n".join(lines))
    assert parsed.pairs == [Pair("q1", "p1"), Pair("q2", "p2", "n2"), Pair("q5", "p5")]
    assert parsed.skipped == 4
    assert [e["line"] for e in parsed.skipped_examples] == [3, 4, 5, 6]


def test_explicit_format_wins_over_detection() -> None:
    assert parse_pairs('{"query": "q", "positive": "p"}', "tsv").skipped == 1
    assert parse_pairs("q\tp", "jsonl").skipped == 1


def test_skipped_examples_are_capped_but_all_skips_counted() -> None:
    parsed = parse_pairs("\n".join(f"bad line {i}" for i in range(50)))
    assert parsed.skipped == 50 and len(parsed.skipped_examples) == 10 and parsed.pairs == []


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("pairs.jsonl", "jsonl"),
        ("P.NDJSON", "jsonl"),
        ("x.json", "jsonl"),
        ("a.tsv", "tsv"),
        ("a.txt", "tsv"),
        (None, "auto"),
    ],
)
def test_format_for_filename(name: str | None, fmt: str) -> None:
    assert format_for_filename(name) == fmt


def test_eval_count_share_floor_and_half_cap() -> None:
    assert eval_count(1000, 0.1, 32) == 100
    assert eval_count(200, 0.1, 32) == 32  # at least a few dozen
    assert eval_count(40, 0.1, 32) == 20  # never more than half
    assert eval_count(40, 0.0, 32) == 0


def test_split_is_deterministic_and_disjoint() -> None:
    pairs = [Pair(f"q{i}", f"p{i}") for i in range(30)]
    train, held = split_pairs(pairs, 7, seed=3)
    again_train, again_held = split_pairs(pairs, 7, seed=3)
    assert (train, held) == (again_train, again_held)
    assert len(held) == 7 and len(train) == 23 and not set(train) & set(held)
    assert split_pairs(pairs, 7, seed=4)[1] != held


def test_planned_steps_batches_pairs_with_and_without_negatives_apart() -> None:
    pairs = [Pair(f"q{i}", f"p{i}", "n" if i < 5 else None) for i in range(21)]
    assert planned_steps(pairs, 4) == 2 + 4
    assert planned_steps(pairs[5:], 8) == 2


def test_a_negative_that_is_the_positive_is_skipped_with_why() -> None:
    parsed = parse_pairs("q1\tp1\tp1\nq2\tp2\tn2\n")
    assert parsed.pairs == [Pair("q2", "p2", "n2")]
    assert (
        parsed.skipped_examples[0]["line"] == 1 and "negative is the positive" in parsed.skipped_examples[0]["reason"]
    )
