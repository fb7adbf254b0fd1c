"""Bulk ingestion: end to end against raw encode, vectors written per second, search latency and recall.

    python -m bench.ingest_bench [--chunks 20000] [--max-tokens 64] [--workers 1,2] [--search-vectors 100000]

1. End to end. Real prose (``bench/corpus.py``) as JSONL documents, streamed into a fresh `embedq up` stack
   per worker count (``--workers 1,2``: pool processes of the one worker), timed from the first byte of
   the upload to the job's success: parsing, chunking by the model's tokenizer, embedding, COPY into
   Postgres and the HNSW build. "vectors in" is when the last vector was written (before the index).
   Against two baselines on the same chunk texts (read back through the export), each run before and after
   the stacks (the CPU is shared, so each is the mean of the two): embedq's own Encoder in this process at
   the precision the workers reported in /v1/models (what the pipeline could reach), and
   SentenceTransformer.encode in fp32.
2. Writes. Chunks with their text and 384-d vectors through the ingest path's binary COPY (staging table,
   then INSERT ... ON CONFLICT), batches of ``--write-batch``, into a standalone embedded Postgres.
3. Search. ``--search-vectors`` vectors in one collection (the real chunk vectors, each repeated with small
   Gaussian noise, so they cluster like embeddings do); the HNSW build time; then for each ef_search the
   p50/p95 of the collection's search SQL and recall@10 against exact (numpy) cosine search, over
   ``--queries`` held-out noisy copies of real vectors.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench.baselines import MODEL, encoder_encode, sentence_transformers_encode, worker_precision
from bench.corpus import realistic_texts
from bench.stack import embedq_stack

DIMENSION = 384


@dataclass
class Corpus:
    documents: list[dict]
    chunks: int


def build_corpus(target_chunks: int, max_tokens: int, overlap: int) -> Corpus:
    """Return enough real-prose documents to make ``target_chunks`` chunks with the worker's own chunker."""
    from workers.chunking import load_model

    model = load_model(MODEL)
    texts = realistic_texts(40_000)
    documents: list[dict] = []
    chunks = 0
    for start in range(0, len(texts), 2000):
        batch = texts[start : start + 2000]
        for text, pieces in zip(batch, model.chunk(batch, max_tokens, overlap), strict=True):
            documents.append({"id": f"p{len(documents)}", "text": text, "metadata": {"shard": len(documents) % 8}})
            chunks += len(pieces)
            if chunks >= target_chunks:
                return Corpus(documents, chunks)
    return Corpus(documents, chunks)


def _jsonl_pieces(documents: list[dict], size: int = 1 << 20) -> Iterator[bytes]:
    buffer: list[str] = []
    length = 0
    for doc in documents:
        line = json.dumps(doc) + "\n"
        buffer.append(line)
        length += len(line)
        if length >= size:
            yield "".join(buffer).encode()
            buffer, length = [], 0
    if buffer:
        yield "".join(buffer).encode()


@dataclass
class Run:
    workers: int
    precision: str
    seconds: float
    vectors_in_seconds: float
    chunks: int
    texts: list[str]
    vectors: np.ndarray


def _wait(client: httpx.Client, job_id: str, started: float) -> tuple[dict, float]:
    vectors_in = 0.0
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if not vectors_in and (job["status"] != "running" or "index" in (job.get("message") or "")):
            vectors_in = time.perf_counter() - started
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job, vectors_in
        time.sleep(0.2)


def ingest_run(corpus: Corpus, workers: int, max_tokens: int, overlap: int, api: str | None) -> Run:
    env = {"EMBEDQ_PRELOAD_MODELS": json.dumps([MODEL])}
    with embedq_stack(api, workers=workers, extra_env=env) as base, httpx.Client(base_url=base, timeout=None) as client:
        name = f"bench-{workers}w-{int(time.time())}"
        chunking = {"max_tokens": max_tokens, "overlap_tokens": overlap}
        client.post("/collections", json={"name": name, "model": MODEL, "chunking": chunking}).raise_for_status()
        warm = client.post(
            f"/collections/{name}/documents", params={"format": "jsonl"}, content=_jsonl_pieces(corpus.documents[:16])
        )
        _wait(client, warm.raise_for_status().json()["id"], time.perf_counter())
        client.delete(f"/collections/{name}").raise_for_status()
        client.post("/collections", json={"name": name, "model": MODEL, "chunking": chunking}).raise_for_status()

        started = time.perf_counter()
        response = client.post(
            f"/collections/{name}/documents", params={"format": "jsonl"}, content=_jsonl_pieces(corpus.documents)
        )
        job, vectors_in = _wait(client, response.raise_for_status().json()["id"], started)
        seconds = time.perf_counter() - started
        if job["status"] != "succeeded" or job["counts"]["failed"]:
            raise RuntimeError(f"ingest job ended {job['status']}: {job.get('error')}")
        lines = [json.loads(line) for line in client.get(f"/collections/{name}/export").content.splitlines()]
        precision = worker_precision(base)
    texts = [line["text"] for line in lines]
    vectors = np.asarray([line["embedding"] for line in lines], dtype=np.float32)
    return Run(workers, precision, seconds, vectors_in, job["ingest"]["chunks"]["done"], texts, vectors)


@contextmanager
def scratch_database() -> Iterator[str]:
    from app.cli.embedded import EmbeddedPostgres, find_free_port
    from app.cli.migrations import upgrade_head

    workdir = Path(tempfile.mkdtemp(prefix="embedq-bench-pg-"))
    postgres = EmbeddedPostgres(workdir / "postgres", find_free_port())
    postgres.start()
    try:
        url = postgres.ensure_database("bench")
        upgrade_head(url)
        yield url
    finally:
        postgres.stop()


def clustered_vectors(base: np.ndarray, count: int, seed: int, noise: float = 0.02) -> np.ndarray:
    """Return ``count`` unit vectors: rows of ``base`` in turn, each plus Gaussian noise (std ``noise``)."""
    rng = np.random.default_rng(seed)
    out = base[np.arange(count) % len(base)] + rng.normal(0, noise, (count, base.shape[1])).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def write_and_search(url: str, base: np.ndarray, args: argparse.Namespace) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    from app.collections.contracts import Vectors
    from app.collections.copy_format import ChunkRow
    from app.collections.repository import CollectionRepository, DocumentInput
    from app.collections.vector_store import VectorStore
    from app.models.collection import Collection, CollectionVersion

    vectors = clustered_vectors(base, args.search_vectors, seed=1)
    engine = create_engine(url)
    with Session(engine) as session:
        repo = CollectionRepository(session)
        store = VectorStore(session)
        collection = Collection(name="bench", max_tokens=64, overlap_tokens=0, meta={})
        repo.add(collection)
        version = CollectionVersion(
            collection_id=collection.id,
            number=1,
            model=MODEL,
            dimension=DIMENSION,
            status="active",
            index_status="none",
        )
        repo.add_version(version)
        store.create_vector_table(version.id, DIMENSION)
        session.commit()
        written, write_seconds = 0, 0.0
        for start in range(0, len(vectors), args.write_batch):
            stop = min(start + args.write_batch, len(vectors))
            inputs = [
                DocumentInput(f"d{i}", f"chunk text number {i}", {"shard": i % 8}, f"{i:064x}")
                for i in range(start, stop)
            ]
            ids = [d.id for d in repo.upsert_documents(collection.id, inputs)]
            session.commit()
            rows = [
                ChunkRow(doc_id, 0, f"chunk text number {i}", 8, 0, 20)
                for i, doc_id in zip(range(start, stop), ids, strict=True)
            ]
            began = time.perf_counter()
            written += store.write_chunks(version.id, rows, Vectors(vectors[start:stop]))
            session.commit()
            write_seconds += time.perf_counter() - began
        print(f"writes: {written} chunks with {DIMENSION}-d vectors in {write_seconds:.1f}s = "
              f"{written / write_seconds:,.0f} vectors/s (binary COPY, batches of {args.write_batch})")  # fmt: skip

        began = time.perf_counter()
        store.build_index(version.id, m=16, ef_construction=64, memory="1GB")
        session.commit()
        print(f"hnsw build over {written} vectors: {time.perf_counter() - began:.1f}s (m=16, ef_construction=64)")
        session.execute(text("ANALYZE"))
        session.commit()

        queries = clustered_vectors(
            base[np.random.default_rng(7).permutation(len(base))[: args.queries]], args.queries, seed=2
        )
        exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
        for ef in (40, 100, 200):
            latencies, recalls = [], []
            for query, truth in zip(queries, exact, strict=True):
                began = time.perf_counter()
                hits = store.search(version, query, top_k=10, metadata_filter=None, ef_search=ef)
                session.rollback()
                latencies.append((time.perf_counter() - began) * 1000)
                found = {int(h.document_id[1:]) for h in hits}
                recalls.append(len(found & set(truth.tolist())) / 10)
            latencies.sort()
            print(f"search ef_search={ef:<4} p50 {statistics.median(latencies):6.2f} ms  "
                  f"p95 {latencies[int(len(latencies) * 0.95)]:6.2f} ms  recall@10 {np.mean(recalls):.3f}")  # fmt: skip
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=20_000, help="chunks in the end-to-end corpus (at least)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--overlap-tokens", type=int, default=8)
    parser.add_argument("--workers", default="1,2", help="worker pool sizes to run, comma-separated; empty: none")
    parser.add_argument("--api", default=None, help="a running API instead of fresh stacks (one run)")
    parser.add_argument("--search-vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--write-batch", type=int, default=5000)
    args = parser.parse_args()

    runs: list[Run] = []
    raw_rates: list[float] = []
    raw_vectors = np.empty((0, DIMENSION), dtype=np.float32)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    if workers:
        corpus = build_corpus(args.chunks, args.max_tokens, args.overlap_tokens)
        print(f"corpus: {len(corpus.documents)} documents -> {corpus.chunks} chunks of <= {args.max_tokens} tokens "
              f"(overlap {args.overlap_tokens}), model {MODEL}")  # fmt: skip
        first = ingest_run(corpus, workers[0], args.max_tokens, args.overlap_tokens, args.api)
        runs.append(first)
        rate, raw_vectors = sentence_transformers_encode(first.texts)
        raw_rates.append(rate)
        own_rates = [encoder_encode(first.texts, first.precision, is_query=False)[0]]
        for count in workers[1:]:
            runs.append(ingest_run(corpus, count, args.max_tokens, args.overlap_tokens, args.api))
        raw_rates.append(sentence_transformers_encode(first.texts)[0])
        own_rates.append(encoder_encode(first.texts, first.precision, is_query=False)[0])
        raw, own = statistics.mean(raw_rates), statistics.mean(own_rates)
        cosine = np.sum(first.vectors * raw_vectors, axis=1)
        print(f"raw SentenceTransformer.encode (fp32) of the {len(first.texts)} chunk texts: "
              f"{' / '.join(f'{r:.1f}' for r in raw_rates)} chunks/s (before / after), mean {raw:.1f}")  # fmt: skip
        print(f"embedq Encoder in process ({first.precision}, the workers' precision) of the same texts: "
              f"{' / '.join(f'{r:.1f}' for r in own_rates)} chunks/s (before / after), mean {own:.1f}")  # fmt: skip
        for run in runs:
            rate = run.chunks / run.seconds
            print(f"ingest end to end, {run.workers} worker process(es): {run.chunks} chunks in {run.seconds:.1f}s = "
                  f"{rate:.1f} chunks/s, {rate / own:.2f}x the Encoder, {rate / raw:.2f}x sentence-transformers "
                  f"(vectors in after {run.vectors_in_seconds:.1f}s: {run.chunks / run.vectors_in_seconds / own:.2f}x "
                  f"the Encoder, {run.chunks / run.vectors_in_seconds / raw:.2f}x sentence-transformers)")  # fmt: skip
        print(f"stored vs raw vectors: mean cosine {cosine.mean():.6f}, min {cosine.min():.6f}")
        base = first.vectors
    else:
        base = sentence_transformers_encode(realistic_texts(1000))[1]
    if args.search_vectors:
        with scratch_database() as url:
            write_and_search(url, base, args)


if __name__ == "__main__":
    main()
