"""All SQL on chunks and vector tables: their DDL, COPY writes, search and export.

Where vectors live: one table per vector version, ``collection_vectors_<version id>`` with a typed
``vector(<dimension>)`` column and its own HNSW cosine index. We chose that over one shared table with a
partial expression index per version (``USING hnsw ((embedding::vector(384)) ...) WHERE version_id = N``):

- pgvector needs a typed column (or expression) for an index, and a version's model fixes its dimension,
  so the table can simply declare it: COPY and INSERT check the dimension for free;
- the HNSW graph is built once, after a version's bulk load (``build_index``); inserting into a live
  HNSW index is ~4x slower per vector than a bulk build here. A plain CREATE INDEX on a table only this
  version writes to blocks no other collection's writes, where on a shared table it would block them all
  (and CREATE INDEX CONCURRENTLY is slower still);
- dropping a collection or a replaced version is a DROP TABLE, not a DELETE of millions of rows and the
  vacuum after it;
- ``chunk_id`` has no foreign key to ``chunks``: the check would lock every referenced chunk row on each
  insert (measurably slower COPY); ``delete_chunks`` deletes vectors first, and reads join on chunks;
- search and export name the table from an integer id we issued, so no user text reaches the SQL.

Next to the dense vector, each row has a nullable ``sparse sparsevec`` column: a BGE-M3 model's sparse
token weights (vocabulary-sized, 0-based token ids), NULL for every other model. Sparse and hybrid
search score it exactly (inner product over the rows with weights): pgvector's HNSW would need a typed
dimension and at most 1,000 non-zero entries per row, and lexical weights are a re-scoring signal here.

A version's ``storage`` picks the dense column's type: ``vector`` (float32) or pgvector's ``halfvec``
(float16: half the table and index, cosine within ~1e-3 of float32's for unit vectors), with the matching
HNSW operator class. Writes stage float32 ``vector`` values either way (one binary COPY format) and the
INSERT into a ``halfvec`` column rounds them through pgvector's implicit cast; queries are cast to the
column's type so the index applies.

The cost: DDL at run time, outside Alembic (``migrations/env.py`` ignores these tables).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.collections.contracts import Vectors
from app.collections.copy_format import ChunkRow, chunk_copy_payload, vector_copy_payload
from app.models.collection import CollectionVersion, VectorStorage

VECTOR_TABLE_PREFIX = "collection_vectors_"

# Per storage: the dense column's pgvector type and its HNSW cosine operator class.
_COLUMN_TYPE = {VectorStorage.FLOAT32: "vector", VectorStorage.FLOAT16: "halfvec"}
_COSINE_OPS = {VectorStorage.FLOAT32: "vector_cosine_ops", VectorStorage.FLOAT16: "halfvec_cosine_ops"}


def vector_table(version_id: int) -> str:
    """Return the name of a version's vector table (ids are ours: integers, never user text)."""
    return f"{VECTOR_TABLE_PREFIX}{int(version_id)}"


@dataclass(frozen=True)
class SearchRow:
    document_id: str
    chunk_index: int
    text: str
    metadata: dict[str, Any]
    score: float


class VectorStore:
    """The chunks of a collection's documents and each version's vectors of them."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # Chunks.

    def delete_chunks(self, version_ids: Sequence[int], document_ids: Sequence[int]) -> None:
        """Delete documents' chunks and their vectors in the given versions (all of their collection's)."""
        if not document_ids:
            return
        ids = {"ids": list(document_ids)}
        for version_id in version_ids:
            if self.vector_table_exists(version_id):
                self.session.execute(
                    text(
                        f"DELETE FROM {vector_table(version_id)} v USING chunks c "
                        "WHERE v.chunk_id = c.id AND c.document_id = ANY(:ids)"
                    ),
                    ids,
                )
        self.session.execute(text("DELETE FROM chunks WHERE document_id = ANY(:ids)"), ids)

    def chunks_of(self, document_ids: Sequence[int]) -> list[tuple[int, str]]:
        rows = self.session.execute(
            text("SELECT id, text FROM chunks WHERE document_id = ANY(:ids) ORDER BY document_id, idx"),
            {"ids": list(document_ids)},
        )
        return [(r.id, r.text) for r in rows]

    # Vector tables.

    def vector_table_exists(self, version_id: int) -> bool:
        return bool(self.session.scalar(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": vector_table(version_id)}))

    def create_vector_table(self, version_id: int, dimension: int, storage: str, *, fresh: bool = False) -> None:
        """Create a version's vector table; ``fresh`` first drops a leftover of the same name (a reused id)."""
        table = vector_table(version_id)
        if fresh:
            self.drop_vector_table(version_id)
        column = _COLUMN_TYPE[VectorStorage(storage)]
        self.session.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                f"chunk_id bigint PRIMARY KEY, embedding {column}({int(dimension)}) NOT NULL, sparse sparsevec)"
            )
        )

    def drop_vector_table(self, version_id: int) -> None:
        self.session.execute(text(f"DROP TABLE IF EXISTS {vector_table(version_id)}"))

    def build_index(
        self, version_id: int, storage: str, *, m: int, ef_construction: int, memory: str, workers: int | None
    ) -> None:
        """Build the version's HNSW cosine index if it is missing (one builder at a time per version).

        ``memory`` is the build's ``maintenance_work_mem``: a graph that outgrows it is finished on disk, far
        slower. ``workers`` sets ``max_parallel_maintenance_workers`` (None: the server's).
        """
        table = vector_table(version_id)
        self.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _index_lock_key(version_id)})
        self.session.execute(text("SELECT set_config('maintenance_work_mem', :mem, true)"), {"mem": memory})
        if workers is not None:
            self.session.execute(
                text("SELECT set_config('max_parallel_maintenance_workers', :n, true)"), {"n": str(int(workers))}
            )
        self.session.execute(
            text(
                f"CREATE INDEX IF NOT EXISTS {table}_hnsw ON {table} USING hnsw "
                f"(embedding {_COSINE_OPS[VectorStorage(storage)]}) "
                f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)})"
            )
        )

    def write_chunks(self, version_id: int, rows: Sequence[ChunkRow], vectors: Vectors) -> int:
        """Insert chunks and their vectors through one binary COPY; return how many vectors were new.

        Idempotent on (document, chunk index) and on the chunk's vector: a repeated call inserts nothing.
        """
        if not rows:
            return 0
        self._copy(
            "ingest_staging",
            "document_id bigint, idx integer, token_count integer, start_char integer, end_char integer, "
            "text text, embedding vector, sparse sparsevec",
            chunk_copy_payload(rows, vectors),
        )
        # One statement: the vectors join the chunks just inserted (not the whole chunks table), so a batch
        # costs the same however large the collection. A chunk that already existed was written with its
        # vector in the same transaction, so skipping both is right.
        result = self.session.execute(
            text(
                "WITH inserted AS ("
                "  INSERT INTO chunks (document_id, idx, text, token_count, start_char, end_char) "
                "  SELECT document_id, idx, text, token_count, start_char, end_char FROM ingest_staging "
                "  ON CONFLICT (document_id, idx) DO NOTHING RETURNING id, document_id, idx) "
                f"INSERT INTO {vector_table(version_id)} (chunk_id, embedding, sparse) "
                "SELECT i.id, s.embedding, s.sparse FROM inserted i "
                "JOIN ingest_staging s ON s.document_id = i.document_id AND s.idx = i.idx "
                "ON CONFLICT (chunk_id) DO NOTHING"
            )
        )
        return result.rowcount

    def write_vectors(self, version_id: int, chunk_ids: Sequence[int], vectors: Vectors) -> int:
        """Insert vectors of existing chunks through one binary COPY; return how many were new."""
        if len(chunk_ids) == 0:
            return 0
        self._copy(
            "vector_staging",
            "chunk_id bigint, embedding vector, sparse sparsevec",
            vector_copy_payload(chunk_ids, vectors),
        )
        result = self.session.execute(
            text(
                f"INSERT INTO {vector_table(version_id)} (chunk_id, embedding, sparse) "
                "SELECT s.chunk_id, s.embedding, s.sparse FROM vector_staging s JOIN chunks c ON c.id = s.chunk_id "
                "ON CONFLICT (chunk_id) DO NOTHING"
            )
        )
        return result.rowcount

    def _copy(self, staging: str, columns: str, payload: bytes) -> None:
        """Load ``payload`` (binary COPY) into a session-local staging table, emptied at commit and here.

        The transaction commits without waiting for its WAL flush: losing it in a crash is harmless, as
        its batch then stays pending and is run again (the reaper re-enqueues it).
        """
        self.session.execute(text("SELECT set_config('synchronous_commit', 'off', true)"))
        self.session.execute(text(f"CREATE TEMP TABLE IF NOT EXISTS {staging} ({columns}) ON COMMIT DELETE ROWS"))
        self.session.execute(text(f"DELETE FROM {staging}"))
        names = ", ".join(column.split()[0] for column in columns.split(", "))
        raw = self.session.connection().connection.driver_connection
        with raw.cursor() as cursor, cursor.copy(f"COPY {staging} ({names}) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.write(payload)

    def vectors_and_bytes(self, version_id: int) -> tuple[int, int]:
        """Return how many vectors a version holds and its table's size on disk (0, 0 before it has one)."""
        if not self.vector_table_exists(version_id):
            return 0, 0
        table = vector_table(version_id)
        vectors = int(self.session.scalar(text(f"SELECT count(*) FROM {table}")) or 0)
        size = int(self.session.scalar(text(f"SELECT pg_total_relation_size('{table}')")) or 0)
        return vectors, size

    # Search and export.

    def holds_at_most(self, version_id: int, limit: int) -> bool:
        """Return whether a version's table holds at most ``limit`` vectors (reads at most ``limit`` + 1 rows)."""
        table = vector_table(version_id)
        found = self.session.scalar(text(f"SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT :n) s"), {"n": limit + 1})
        return int(found or 0) <= limit

    def search(
        self,
        version: CollectionVersion,
        vector: np.ndarray,
        *,
        top_k: int,
        metadata_filter: dict[str, Any] | None,
        ef_search: int,
        exact: bool = False,
    ) -> list[SearchRow]:
        """Return the ``top_k`` chunks nearest to ``vector`` by cosine, best first (HNSW when indexed, unless
        ``exact``: every vector of the version is scored)."""
        assert version.dimension is not None
        table = vector_table(version.id)
        query_vector = _query_cast(version)
        self.session.execute(text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": str(ef_search)})
        params: dict[str, Any] = {"q": _query_text(version, vector), "k": top_k}
        where = ""
        if metadata_filter:
            # Filtered: let the index scan go on past ef_search candidates until top_k rows pass the filter.
            self.session.execute(text("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)"))
            where = "WHERE d.metadata @> CAST(:filter AS jsonb) "
            params["filter"] = json.dumps(metadata_filter)
        rows = self.session.execute(
            text(
                "WITH nearest AS MATERIALIZED ("
                f"  SELECT v.chunk_id, v.embedding <=> {query_vector} AS distance "
                f"  FROM {table} v JOIN chunks c ON c.id = v.chunk_id JOIN documents d ON d.id = c.document_id "
                f"  {where}ORDER BY {_dense_order(query_vector, exact)} LIMIT :k) "
                "SELECT d.external_id, c.idx, c.text, d.metadata, 1 - n.distance AS score "
                "FROM nearest n JOIN chunks c ON c.id = n.chunk_id JOIN documents d ON d.id = c.document_id "
                "ORDER BY n.distance, d.external_id, c.idx"
            ),
            params,
        )
        return [SearchRow(r.external_id, r.idx, r.text, r.metadata, float(r.score)) for r in rows]

    def search_hybrid(
        self,
        version: CollectionVersion,
        vector: np.ndarray,
        sparse: dict[int, float],
        sparse_dimension: int,
        *,
        top_k: int,
        metadata_filter: dict[str, Any] | None,
        ef_search: int,
        dense_weight: float,
        sparse_weight: float,
        exact: bool = False,
    ) -> list[SearchRow]:
        """Return the ``top_k`` chunks by (dense_weight * cosine + sparse_weight * sparse dot) / (sum of weights).

        Candidates are the ``max(top_k, ef_search)`` nearest by dense cosine (HNSW when indexed; left out when
        ``dense_weight`` is 0, and then so is every chunk sharing no token with the query) and as many by sparse
        inner product (exact), re-scored together: BGE-M3's authors combine its dense and lexical scores this way.
        """
        assert version.dimension is not None
        table = vector_table(version.id)
        query_vector = _query_cast(version)
        self.session.execute(text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": str(ef_search)})
        params: dict[str, Any] = {
            "q": _query_text(version, vector),
            "s": _sparse_text(sparse, sparse_dimension),
            "k": top_k,
            "n": max(top_k, ef_search),
            "wd": dense_weight,
            "ws": sparse_weight,
        }
        joins = f"FROM {table} v JOIN chunks c ON c.id = v.chunk_id JOIN documents d ON d.id = c.document_id "
        where = ""
        if metadata_filter:
            self.session.execute(text("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)"))
            where = "AND d.metadata @> CAST(:filter AS jsonb) "
            params["filter"] = json.dumps(metadata_filter)
        candidates = [
            f"lexical AS MATERIALIZED (SELECT v.chunk_id {joins}WHERE v.sparse IS NOT NULL {where}"
            "ORDER BY v.sparse <#> CAST(:s AS sparsevec) LIMIT :n)"
        ]
        union = "SELECT chunk_id FROM lexical"
        # Sparse alone: a chunk that shares no token with the query scores 0 and is no match.
        shared = "" if dense_weight > 0 else "AND v.sparse <#> CAST(:s AS sparsevec) < 0 "
        if dense_weight > 0:
            candidates.append(
                f"dense AS MATERIALIZED (SELECT v.chunk_id {joins}WHERE true {where}"
                f"ORDER BY {_dense_order(query_vector, exact)} LIMIT :n)"
            )
            union += " UNION SELECT chunk_id FROM dense"
        rows = self.session.execute(
            text(
                f"WITH {', '.join(candidates)}, scored AS MATERIALIZED ("
                f"  SELECT v.chunk_id, (:wd * (1 - (v.embedding <=> {query_vector})) "
                "    + :ws * COALESCE(-(v.sparse <#> CAST(:s AS sparsevec)), 0)) / (:wd + :ws) AS score "
                f"  FROM {table} v WHERE v.chunk_id IN ({union}) {shared}ORDER BY score DESC LIMIT :k) "
                "SELECT d.external_id, c.idx, c.text, d.metadata, n.score "
                "FROM scored n JOIN chunks c ON c.id = n.chunk_id JOIN documents d ON d.id = c.document_id "
                "ORDER BY n.score DESC, d.external_id, c.idx"
            ),
            params,
        )
        return [SearchRow(r.external_id, r.idx, r.text, r.metadata, float(r.score)) for r in rows]

    def export_rows(self, collection_id: int, version_id: int, *, vectors_as: str) -> Iterator[Sequence[Any]]:
        """Yield (document id, chunk index, chunk text, metadata, vector, sparse) in document order, streamed.

        ``sparse`` is pgvector's text form of the BGE-M3 sparse weights (see ``export.sparse_weights``), or None.

        ``vectors_as`` is "text" (pgvector's JSON-compatible text form) or "array" (a list of floats).
        """
        cast = "text" if vectors_as == "text" else "real[]"
        result = self.session.execute(
            text(
                f"SELECT d.external_id, c.idx, c.text, d.metadata, v.embedding::{cast} AS embedding, "
                "v.sparse::text AS sparse "
                f"FROM documents d JOIN chunks c ON c.document_id = d.id "
                f"LEFT JOIN {vector_table(version_id)} v ON v.chunk_id = c.id "
                "WHERE d.collection_id = :cid AND d.status = 'ready' ORDER BY d.id, c.idx"
            ).execution_options(yield_per=1000),
            {"cid": collection_id},
        )
        yield from result


def _index_lock_key(version_id: int) -> int:
    # pg_advisory_xact_lock key space shared with other features: tag ours in the high bits.
    return (0x69647178 << 32) | int(version_id)


def _query_cast(version: CollectionVersion) -> str:
    """The SQL of the query vector ``:q`` as the version's column type, so its HNSW index applies."""
    return f"CAST(:q AS {_COLUMN_TYPE[VectorStorage(version.storage)]}({int(version.dimension or 0)}))"


def _query_text(version: CollectionVersion, vector: np.ndarray) -> str:
    """The query vector's text; for float16 storage scaled to unit length (cosine ignores length), so that no
    value of a caller's vector overflows or underflows half precision."""
    if version.storage == VectorStorage.FLOAT16.value:
        vector = np.asarray(vector, dtype=np.float64)
        vector = vector / np.linalg.norm(vector)
    return _vector_text(vector)


def _vector_text(vector: np.ndarray) -> str:
    return "[" + ",".join(map(repr, np.asarray(vector, dtype=np.float32).tolist())) + "]"


def _sparse_text(weights: dict[int, float], dimension: int) -> str:
    # pgvector's text form numbers dimensions from 1.
    return "{" + ",".join(f"{int(i) + 1}:{float(w)!r}" for i, w in sorted(weights.items())) + f"}}/{int(dimension)}"


def _dense_order(query_vector: str, exact: bool) -> str:
    """Return the ORDER BY of a dense search: the HNSW index's operator, or (exact) an expression it cannot
    serve, so the version's table is scanned and sorted while the joins keep their indexes."""
    distance = f"v.embedding <=> {query_vector}"
    return f"({distance}) + 0" if exact else distance
