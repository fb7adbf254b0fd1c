"""Postgres binary COPY payloads for chunks and their vectors (dense ``vector``, sparse ``sparsevec``).

The format's framing and the dense vector's layout live in ``app/core/binary_copy.py``; the layouts here
follow Postgres' binary COPY format and pgvector's binary send/receive functions.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.collections.contracts import Vectors
from app.core.binary_copy import COPY_HEADER, COPY_TRAILER, vector_field_header

# document_id int8, idx int4, token_count int4, start_char int4, end_char int4 (text and vector follow).
_CHUNK_ROW = struct.Struct("!hiqiiiiiiii")
_NULL_FIELD = struct.pack("!i", -1)


@dataclass(frozen=True)
class ChunkRow:
    """One chunk as it is stored: its document, its index in the document, text, tokens and span."""

    document_id: int
    idx: int
    text: str
    token_count: int
    start_char: int
    end_char: int


def chunk_copy_payload(rows: Sequence[ChunkRow], vectors: Vectors) -> bytes:
    """Return the binary COPY of (document_id, idx, token_count, start_char, end_char, text, embedding, sparse)."""
    dimension = vectors.dense.shape[1]
    big_endian = np.ascontiguousarray(vectors.dense, dtype=">f4")
    vector_header = vector_field_header(dimension)
    parts = [COPY_HEADER]
    for row, vector, sparse in zip(rows, big_endian, _sparse_fields(vectors), strict=True):
        encoded = row.text.encode("utf-8")
        parts.append(
            _CHUNK_ROW.pack(8, 8, row.document_id, 4, row.idx, 4, row.token_count, 4, row.start_char, 4, row.end_char)
        )
        parts += [struct.pack("!i", len(encoded)), encoded, vector_header, vector.tobytes(), sparse]
    parts.append(COPY_TRAILER)
    return b"".join(parts)


def vector_copy_payload(chunk_ids: Sequence[int], vectors: Vectors) -> bytes:
    """Return the binary COPY of (chunk_id, embedding, sparse)."""
    count, dimension = vectors.dense.shape
    fields = [
        ("fields", ">i2"),
        ("id_len", ">i4"),
        ("id", ">i8"),
        ("vec_len", ">i4"),
        ("dim", ">i2"),
        ("unused", ">i2"),
        ("values", ">f4", (dimension,)),
    ]
    if vectors.sparse is None:  # the common case stays one numpy buffer: every sparse field is NULL (-1)
        fields.append(("sparse_null", ">i4"))
    records = np.empty(count, dtype=np.dtype(fields))
    records["fields"], records["id_len"], records["id"] = 3, 8, np.asarray(chunk_ids, dtype=np.int64)
    records["vec_len"], records["dim"], records["unused"] = 4 + 4 * dimension, dimension, 0
    records["values"] = vectors.dense
    if vectors.sparse is None:
        records["sparse_null"] = -1
        return COPY_HEADER + records.tobytes() + COPY_TRAILER
    parts = [COPY_HEADER]
    for record, sparse in zip(records, _sparse_fields(vectors), strict=True):
        parts += [record.tobytes(), sparse]
    parts.append(COPY_TRAILER)
    return b"".join(parts)


def _sparse_field(weights: dict[int, float] | None, dimension: int | None) -> bytes:
    """A sparsevec value in binary COPY: int32 length, then int32 dim, nnz, unused, 0-based sorted ids, floats."""
    if weights is None or dimension is None:
        return _NULL_FIELD
    ids = sorted(weights)
    body = struct.pack(f"!iii{len(ids)}i{len(ids)}f", dimension, len(ids), 0, *ids, *(weights[i] for i in ids))
    return struct.pack("!i", len(body)) + body


def _sparse_fields(vectors: Vectors) -> list[bytes]:
    if vectors.sparse is None:
        return [_NULL_FIELD] * len(vectors)
    return [_sparse_field(weights, vectors.sparse_dimension) for weights in vectors.sparse]
