"""Export a collection's active version as JSONL or Parquet, streamed from the database as it is read."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from app.collections.repository import CollectionRepository
from app.collections.service import require_collection
from app.collections.vector_store import VectorStore
from app.core.db import Scope, session_scope
from app.core.security import Principal


def export_target(session: Session, name: str, principal: Principal) -> tuple[int, int, int | None]:
    """Return (collection id, active version id, dimension), or 404: checked before a stream starts."""
    repo = CollectionRepository(session)
    collection = require_collection(repo, name, principal)
    version = repo.active_version(collection.id)
    return collection.id, version.id, version.dimension


def export_jsonl(collection_id: int, version_id: int, scope: Scope = session_scope) -> Iterator[bytes]:
    """Yield the collection as JSONL: one line per chunk with its document id, text, metadata and vector."""
    with scope() as session:
        store = VectorStore(session)
        if not store.vector_table_exists(version_id):
            return
        lines: list[str] = []
        for external_id, idx, chunk_text, metadata, embedding, sparse in store.export_rows(
            collection_id, version_id, vectors_as="text"
        ):
            fields = {"document_id": external_id, "chunk_index": idx, "text": chunk_text, "metadata": metadata}
            if sparse is not None:  # BGE-M3 collections: token id -> weight, as /vectorize-hybrid returns it
                fields["sparse"] = sparse_weights(sparse)
            head = json.dumps(fields, ensure_ascii=False)
            # pgvector's text form is already a JSON array.
            lines.append(f'{head[:-1]}, "embedding": {embedding or "null"}}}\n')
            if len(lines) >= 500:
                yield "".join(lines).encode("utf-8")
                lines.clear()
        if lines:
            yield "".join(lines).encode("utf-8")


class _Drain(io.RawIOBase):
    """A write-only file whose bytes are taken out as they come, so a Parquet file streams."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def export_parquet(
    collection_id: int,
    version_id: int,
    dimension: int | None,
    scope: Scope = session_scope,
    rows_per_group: int = 2048,
) -> Iterator[bytes]:
    """Yield the collection as one Parquet file, a row group at a time (vectors as fixed-size float lists)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    width = dimension or 0
    schema = pa.schema(
        [
            ("document_id", pa.string()),
            ("chunk_index", pa.int32()),
            ("text", pa.string()),
            ("metadata", pa.string()),
            ("embedding", pa.list_(pa.float32(), width) if width else pa.list_(pa.float32())),
        ]
    )
    sink = _Drain()
    with scope() as session, pq.ParquetWriter(sink, schema) as writer:
        store = VectorStore(session)
        exists = store.vector_table_exists(version_id)
        group: list[Any] = []
        for row in store.export_rows(collection_id, version_id, vectors_as="array") if exists else ():
            group.append(row)
            if len(group) >= rows_per_group:
                writer.write_table(_parquet_table(pa, schema, group, width))
                group.clear()
                yield sink.take()
        if group:
            writer.write_table(_parquet_table(pa, schema, group, width))
    yield sink.take()


def _parquet_table(pa: Any, schema: Any, rows: list[Any], width: int) -> Any:
    vectors = np.asarray([r[4] if r[4] is not None else [np.nan] * width for r in rows], dtype=np.float32)
    embedding = (
        pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), width)
        if width
        else pa.array([list(r[4] or []) for r in rows], type=pa.list_(pa.float32()))
    )
    return pa.Table.from_arrays(
        [
            pa.array([r[0] for r in rows], pa.string()),
            pa.array([r[1] for r in rows], pa.int32()),
            pa.array([r[2] for r in rows], pa.string()),
            pa.array([json.dumps(r[3], ensure_ascii=False) for r in rows], pa.string()),
            embedding,
        ],
        schema=schema,
    )


def sparse_weights(literal: str) -> dict[str, float]:
    """Return pgvector's sparsevec text ``{1:0.5,8:0.25}/dim`` as {0-based token id: weight}, as /vectorize-hybrid."""
    body = literal.rsplit("/", 1)[0].strip("{}")
    pairs = (pair.split(":") for pair in body.split(",") if pair)
    return {str(int(i) - 1): float(w) for i, w in pairs}
