"""Bulk ingestion: end to end against raw encode, vectors written per second, search latency and recall.

    python -m bench.ingest_bench [--chunks 20000] [--max-tokens 64] [--workers 1,2] [--search-vectors 100000]
        [--storage float32,float16] [--ef-search 40,100,200] [--build-memory 1GB] [--shared-buffers 4GB]

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
3. Search (``bench/vector_search.py``). ``--search-vectors`` vectors in one collection, one version per
   ``--storage`` (the real chunk vectors, or ``--base-texts`` real texts' vectors without ``--workers``,
   each repeated with small Gaussian noise, so they cluster like embeddings do); each HNSW build's time and
   size; then for each storage and ``--ef-search`` the p50/p95 of the collection's search SQL and recall@10
   against exact (numpy) cosine search, over ``--queries`` further noisy copies of real vectors.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np

from app.core.config import get_settings
from bench import vector_search
from bench.baselines import MODEL, encoder_encode, sentence_transformers_encode, worker_precision
from bench.corpus import realistic_texts
from bench.stack import embedq_stack


@dataclass
class Corpus:
    documents: list[dict]
    chunks: int


def build_corpus(target_chunks: int, max_tokens: int, overlap: int) -> Corpus:
    """Return enough real-prose documents to make ``target_chunks`` chunks with the worker's own chunker."""
    from app.catalog.resolver import resolve_model
    from workers.chunking import EncoderModel
    from workers.runtime.encoder import Encoder

    # The chunker of the worker's model, loaded here without the worker's registry (which reads Postgres).
    model = EncoderModel(Encoder(resolve_model(MODEL, get_settings())))
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
    parser.add_argument("--storage", default="float32,float16", help="collection storages to search, comma-separated")
    parser.add_argument("--ef-search", default="40,100,200", help="hnsw.ef_search values, comma-separated")
    parser.add_argument("--base-texts", type=int, default=1000, help="without --workers: real texts to cluster around")
    parser.add_argument("--build-memory", default=get_settings().hnsw_build_memory, help="maintenance_work_mem")
    parser.add_argument("--build-workers", type=int, default=None, help="max_parallel_maintenance_workers")
    parser.add_argument("--shared-buffers", default=None, help="the bench Postgres's shared_buffers (default 128MB)")
    args = parser.parse_args()

    runs: list[Run] = []
    raw_rates: list[float] = []
    raw_vectors = np.empty((0, 384), dtype=np.float32)
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
    elif args.search_vectors:
        # The Encoder at bf16 (cosine 0.9999 to fp32 here) makes 10,000 cluster centres in half a minute.
        base = encoder_encode(realistic_texts(args.base_texts), "bf16", is_query=False)[1]
        print(f"cluster centres: {len(base):,} real texts' vectors, {args.search_vectors / len(base):,.0f} per centre")
    if args.search_vectors:
        bench = vector_search.SearchBench(
            count=args.search_vectors,
            queries=args.queries,
            write_batch=args.write_batch,
            storages=[s.strip() for s in args.storage.split(",") if s.strip()],
            ef_search=[int(e) for e in args.ef_search.split(",") if e.strip()],
            build_memory=args.build_memory,
            build_workers=args.build_workers,
            shared_buffers=args.shared_buffers,
        )
        with vector_search.scratch_database(args.shared_buffers) as url:
            vector_search.run(url, base, bench)


if __name__ == "__main__":
    main()
