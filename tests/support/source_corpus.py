"""Corpora for source tests: documents as Parquet (several row groups), JSONL and CSV bytes."""

from __future__ import annotations

import csv
import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq

from support.texts import SENTENCES


def documents(prefix: str, count: int, seed: int = 0, sentences: int = 2) -> list[dict]:
    """Return ``count`` short documents of real sentences, ids ``<prefix>-<n>``, with a metadata group."""
    rng = random.Random(seed)
    return [
        {
            "id": f"{prefix}-{n}",
            "text": f"{prefix} {n}. " + " ".join(rng.choices(SENTENCES, k=rng.randint(1, sentences))),
            "group": "even" if n % 2 == 0 else "odd",
        }
        for n in range(count)
    ]


def parquet_bytes(rows: list[dict], row_group_size: int) -> bytes:
    """Return ``rows`` as a Parquet file whose row groups hold ``row_group_size`` rows each."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer, row_group_size=row_group_size)
    return buffer.getvalue()


def jsonl_bytes(rows: list[dict]) -> bytes:
    """Return ``rows`` as JSONL, the group inside each line's metadata object."""
    lines = [json.dumps({"id": r["id"], "text": r["text"], "metadata": {"group": r["group"]}}) for r in rows]
    return ("\n".join(lines) + "\n").encode()


def csv_bytes(rows: list[dict]) -> bytes:
    """Return ``rows`` as CSV with an id,text,group header."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["id", "text", "group"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()
