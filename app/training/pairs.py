"""Training pairs from text: TSV ``query<TAB>positive[<TAB>negative]`` or JSONL ``{"query", "positive", "negative"?}``.

A line that is neither is skipped and counted, with the first few reasons kept for the user; blank lines
separate nothing and are ignored.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Literal

PairFormat = Literal["auto", "tsv", "jsonl"]

MAX_SKIPPED_EXAMPLES = 10
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass(frozen=True)
class Pair:
    """One training example: a query, the passage it should find, and optionally a passage it should not."""

    query: str
    positive: str
    negative: str | None = None


@dataclass
class ParsedPairs:
    """The usable pairs of a text and how many of its lines were skipped (with the first reasons)."""

    pairs: list[Pair] = field(default_factory=list)
    skipped: int = 0
    skipped_examples: list[dict[str, object]] = field(default_factory=list)

    def skip(self, line: int, reason: str) -> None:
        self.skipped += 1
        if len(self.skipped_examples) < MAX_SKIPPED_EXAMPLES:
            self.skipped_examples.append({"line": line, "reason": reason})


def format_for_filename(filename: str | None) -> PairFormat:
    """Return the format an uploaded file's name implies: jsonl for .jsonl/.ndjson/.json, tsv for .tsv/.txt."""
    name = (filename or "").lower()
    if name.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith((".tsv", ".txt", ".tab")):
        return "tsv"
    return "auto"


def parse_pairs(text: str, fmt: PairFormat = "auto") -> ParsedPairs:
    """Return the pairs in ``text`` and the lines skipped; ``auto`` reads JSONL when the first line is an object."""
    lines = text.splitlines()
    if fmt == "auto":
        first = next((line.lstrip() for line in lines if line.strip()), "")
        fmt = "jsonl" if first.startswith("{") else "tsv"
    parse_line = _jsonl_line if fmt == "jsonl" else _tsv_line
    parsed = ParsedPairs()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        result = parse_line(line)
        if isinstance(result, Pair):
            parsed.pairs.append(result)
        else:
            parsed.skip(number, result)
    return parsed


def _tsv_line(line: str) -> Pair | str:
    fields = line.split("\t")
    if len(fields) not in (2, 3):
        return f"expected query<TAB>positive or query<TAB>positive<TAB>negative, found {len(fields)} field(s)"
    return _pair(*fields)


def _jsonl_line(line: str) -> Pair | str:
    try:
        record = json.loads(line)
    except ValueError as exc:
        return f"not JSON: {exc}"
    if not isinstance(record, dict):
        return 'expected an object {"query", "positive", "negative"?}'
    query, positive, negative = record.get("query"), record.get("positive"), record.get("negative")
    if not isinstance(query, str) or not isinstance(positive, str):
        return '"query" and "positive" must both be strings'
    if negative is not None and not isinstance(negative, str):
        return '"negative" must be a string when present'
    return _pair(query, positive, negative)


def _pair(query: str, positive: str, negative: str | None = None) -> Pair | str:
    query, positive = query.strip(), positive.strip()
    negative = negative.strip() if negative is not None else None
    if not query or not positive:
        return "empty query or positive"
    if negative == "":
        return "empty negative (leave the third field out instead)"
    if any("\x00" in t for t in (query, positive, negative or "")):
        return "contains a NUL character"
    if negative == positive:
        return "the negative is the positive: a pair cannot teach a passage as both its answer and not"
    return Pair(query, positive, negative)


def eval_count(total: int, share: float, minimum: int) -> int:
    """Return how many of ``total`` pairs to hold out: ``share`` of them, at least ``minimum``, at most half."""
    wanted = max(round(total * share), minimum) if share > 0 else 0
    return min(wanted, total // 2)


def split_pairs(pairs: list[Pair], held_out: int, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Return (train, eval): ``held_out`` pairs picked at random with ``seed``, the same on every call."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    held = set(order[:held_out])
    train = [p for i, p in enumerate(pairs) if i not in held]
    evaluation = [pairs[i] for i in sorted(held)]
    return train, evaluation


def planned_steps(train: list[Pair], batch_size: int) -> int:
    """Return the steps of one epoch: pairs with and without a hard negative are batched separately."""
    with_negative = sum(p.negative is not None for p in train)
    groups = (with_negative, len(train) - with_negative)
    return sum(-(-n // batch_size) for n in groups if n)
