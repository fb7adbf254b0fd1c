"""Search at scale: vectors written through the ingest path, the HNSW build, then latency and recall per storage.

Run from ``bench/ingest_bench.py`` (``--search-vectors``). In a standalone embedded Postgres:

1. Writes. ``count`` chunks with their text and 384-d vectors (``clustered_vectors``) in one collection:
   the first storage's version through the ingest path (``VectorStore.write_chunks``: binary COPY into a
   staging table, then INSERT ... ON CONFLICT), each other storage's version through the reembed path
   (``write_vectors``, the same chunks), in batches.
2. Builds. Each version's HNSW index (m 16, ef_construction 64) timed, with the table and index sizes.
3. Search. For each storage and ``ef_search``: p50/p95 of the collection's search SQL and recall@10 against
   exact float32 cosine search (numpy), over ``queries`` further noisy copies of base vectors; for float16
   also against exact search over the float16-rounded values, to tell the graph's misses from rounding's.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIMENSION = 384
_BLOCK = 100_000  # vectors generated, and scanned by exact search, at a time


@dataclass(frozen=True)
class SearchBench:
    count: int
    queries: int
    write_batch: int
    storages: list[str]
    ef_search: list[int]
    build_memory: str
    build_workers: int | None
    shared_buffers: str | None


@contextmanager
def scratch_database(shared_buffers: str | None) -> Iterator[str]:
    """Yield the URL of a migrated database on a fresh embedded Postgres, with ``shared_buffers`` if given."""
    import psycopg

    from app.cli.embedded import EmbeddedPostgres, find_free_port
    from app.cli.migrations import upgrade_head

    workdir = Path(tempfile.mkdtemp(prefix="embedq-bench-pg-"))
    postgres = EmbeddedPostgres(workdir / "postgres", find_free_port())
    postgres.start()
    try:
        url = postgres.ensure_database("bench")
        if shared_buffers:
            with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
                conn.execute(f"ALTER SYSTEM SET shared_buffers = '{shared_buffers}'")
            postgres.stop()
            postgres.start()
        upgrade_head(url)
        yield url
    finally:
        postgres.stop()


def clustered_vectors(base: np.ndarray, count: int, seed: int, noise: float = 0.02) -> np.ndarray:
    """Return ``count`` unit vectors: rows of ``base`` in turn, each plus Gaussian noise (std ``noise``)."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, base.shape[1]), dtype=np.float32)
    for start in range(0, count, _BLOCK):
        stop = min(start + _BLOCK, count)
        block = base[np.arange(start, stop) % len(base)] + noise * rng.standard_normal(
            (stop - start, base.shape[1]), dtype=np.float32
        )
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_top10(queries: np.ndarray, vectors: np.ndarray, *, half: bool = False) -> np.ndarray:
    """Return the indices of each query's 10 nearest vectors by cosine (unit vectors: inner product).

    ``half``: of the queries and vectors rounded to float16 (as a float16 collection holds and queries them).
    """
    if half:
        queries = _rounded_to_half(queries)
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.empty((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), _BLOCK):
        block = vectors[start : start + _BLOCK]
        scores = queries @ (_rounded_to_half(block) if half else block).T
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        best_ids = np.concatenate([best_ids, top + start], axis=1)
        keep = np.argsort(-best_scores, axis=1)[:, :10]
        best_scores, best_ids = np.take_along_axis(best_scores, keep, axis=1), np.take_along_axis(best_ids, keep, 1)
    return best_ids


def _rounded_to_half(vectors: np.ndarray) -> np.ndarray:
    rounded = vectors.astype(np.float16).astype(np.float32)
    return rounded / np.linalg.norm(rounded, axis=1, keepdims=True)


def _print_hnsw_notice(notice) -> None:
    if "hnsw" in (notice.message_primary or ""):
        print(f"  postgres: {notice.message_primary} ({notice.message_detail or ''})")


def _recall(found: list[set[int]], exact: np.ndarray | None) -> float:
    assert exact is not None
    return float(np.mean([len(hits & set(truth.tolist())) / 10 for hits, truth in zip(found, exact, strict=True)]))


def _external_id(i: int) -> str:
    return f"d{i:08d}"  # zero-padded: text order is number order


def run(url: str, base: np.ndarray, bench: SearchBench) -> None:
    """Write, index and search ``bench.count`` vectors clustered around ``base``, once per storage; print it all."""
    from sqlalchemy import create_engine, event, text
    from sqlalchemy.orm import Session

    from app.collections.contracts import Vectors
    from app.collections.copy_format import ChunkRow
    from app.collections.repository import CollectionRepository, DocumentInput
    from app.collections.vector_store import VectorStore, vector_table
    from app.models.collection import Collection, CollectionVersion, VersionStatus

    vectors = clustered_vectors(base, bench.count, seed=1)
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _print_notices(dbapi_connection, _record) -> None:  # pgvector says when a graph outgrows its memory
        dbapi_connection.add_notice_handler(_print_hnsw_notice)

    with Session(engine) as session:
        repo = CollectionRepository(session)
        store = VectorStore(session)
        collection = Collection(name="bench", max_tokens=64, overlap_tokens=0, meta={})
        repo.add(collection)
        versions = []
        for number, storage in enumerate(bench.storages, start=1):
            status = VersionStatus.ACTIVE if number == 1 else VersionStatus.BUILDING
            version = CollectionVersion(
                collection_id=collection.id, number=number, model="bench", dimension=DIMENSION, storage=storage,
                status=status.value, index_status="none",
            )  # fmt: skip
            repo.add_version(version)
            store.create_vector_table(version.id, DIMENSION, storage)
            versions.append(version)
        session.commit()
        for version in versions:  # detached: a search's rollback must not reload them inside the timing
            session.refresh(version)
            session.expunge(version)

        first, *others = versions
        written, seconds = 0, 0.0
        for start in range(0, bench.count, bench.write_batch):
            stop = min(start + bench.write_batch, bench.count)
            inputs = [
                DocumentInput(_external_id(i), f"chunk text number {i}", {"shard": i % 8}, f"{i:064x}")
                for i in range(start, stop)
            ]
            ids = [d.id for d in repo.upsert_documents(collection.id, inputs)]
            session.commit()
            rows = [
                ChunkRow(doc_id, 0, f"chunk text number {i}", 8, 0, 20)
                for i, doc_id in zip(range(start, stop), ids, strict=True)
            ]
            began = time.perf_counter()
            written += store.write_chunks(first.id, rows, Vectors(vectors[start:stop]))
            session.commit()
            seconds += time.perf_counter() - began
        rate = written / seconds
        print(f"writes, ingest path (chunk text + {DIMENSION}-d vector) into {first.storage}: {written:,} in "
              f"{seconds:.1f}s = {rate:,.0f} vectors/s (binary COPY, batches of {bench.write_batch})")  # fmt: skip
        chunk_ids = np.fromiter(
            session.scalars(
                text("SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id ORDER BY d.external_id")
            ),
            dtype=np.int64,
        )
        session.commit()
        for version in others:
            written, began = 0, time.perf_counter()
            for start in range(0, bench.count, bench.write_batch):
                stop = min(start + bench.write_batch, bench.count)
                written += store.write_vectors(version.id, chunk_ids[start:stop], Vectors(vectors[start:stop]))
                session.commit()
            seconds = time.perf_counter() - began
            print(f"writes, reembed path (vectors of those chunks) into {version.storage}: {written:,} in "
                  f"{seconds:.1f}s = {written / seconds:,.0f} vectors/s")  # fmt: skip

        workers = "the server's" if bench.build_workers is None else str(bench.build_workers)
        for version in versions:
            began = time.perf_counter()
            store.build_index(
                version.id, version.storage, m=16, ef_construction=64, memory=bench.build_memory,
                workers=bench.build_workers,
            )  # fmt: skip
            session.commit()
            table = vector_table(version.id)
            table_bytes = session.scalar(text(f"SELECT pg_relation_size('{table}')"))
            index_bytes = session.scalar(text(f"SELECT pg_relation_size('{table}_hnsw')"))
            built = time.perf_counter() - began
            mib = f"table {table_bytes / 2**20:,.0f} MiB, index {index_bytes / 2**20:,.0f} MiB"
            print(f"hnsw build, {version.storage}, {bench.count:,} vectors: {built:.1f}s (m=16, ef_construction=64, "
                  f"maintenance_work_mem {bench.build_memory}, parallel workers {workers}); {mib}")  # fmt: skip
        session.execute(text("ANALYZE"))
        session.commit()

        rng = np.random.default_rng(7)
        queries = clustered_vectors(base[rng.permutation(len(base))[: bench.queries]], bench.queries, seed=2)
        exact = exact_top10(queries, vectors)
        exact_half = exact_top10(queries, vectors, half=True) if "float16" in bench.storages else None
        for version in versions:
            # ef_search 0 stands for an exact search (every vector scored), as collections of at most
            # EMBEDQ_SEARCH_EXACT_MAX_VECTORS vectors are searched.
            for ef in [*bench.ef_search, 0]:
                latencies, found = [], []
                for query in queries:
                    began = time.perf_counter()
                    hits = store.search(
                        version, query, top_k=10, metadata_filter=None, ef_search=max(ef, 1), exact=ef == 0
                    )
                    session.rollback()
                    latencies.append((time.perf_counter() - began) * 1000)
                    found.append({int(h.document_id[1:]) for h in hits})
                latencies.sort()
                p50, p95 = statistics.median(latencies), latencies[int(len(latencies) * 0.95)]
                # Against float32 exact search: what a user gets. Against float16 exact search: the graph's part.
                graph = f" ({_recall(found, exact_half):.3f} of exact float16)" if version.storage == "float16" else ""
                how = f"ef_search={ef:<4}" if ef else "exact        "
                print(f"search {version.storage} {how} p50 {p50:6.2f} ms  p95 {p95:6.2f} ms  "
                      f"recall@10 {_recall(found, exact):.3f}{graph}")  # fmt: skip
    engine.dispose()
