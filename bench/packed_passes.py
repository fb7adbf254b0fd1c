"""Packed forward passes against padded ones, in one process: texts/s by pool size and precision, and cosine.

    python -m bench.packed_passes [--n 2000] [--pools 72,2000] [--precisions bf16,fp32] [--rounds 3] [--threads 1]

One Encoder per precision (MiniLM by default); each round encodes the texts in pools of the given size (as
the sync batcher hands a worker a pool of requests, or a job a batch) with EMBEDQ_PACKED_PASSES on and off,
interleaved, so a busy machine slows both alike. Prints each setting's median texts/s, the ratio packed /
padded (median over rounds) and the cosine of packed to padded vectors. ``--threads`` sets torch's threads:
1 is what each sync worker runs with on a CPU (one worker per core).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from app.catalog.resolver import resolve_model
from app.core.config import get_settings
from bench.corpus import realistic_texts
from workers.runtime.encoder import Encoder
from workers.runtime.pass_sizes import packed_size

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _pooled(encoder: Encoder, texts: list[str], pool: int) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    vectors = np.concatenate([encoder.encode(texts[i : i + pool]) for i in range(0, len(texts), pool)])
    return vectors, time.perf_counter() - started


def measure(encoder: Encoder, texts: list[str], pool: int, rounds: int) -> str:
    """Return one report line: packed and padded texts/s at ``pool``, their ratio and cosine."""
    packing = encoder.packing
    rates: dict[str, list[float]] = {"packed": [], "padded": []}
    ratios: list[float] = []
    vectors: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        seconds: dict[str, float] = {}
        for mode in ("padded", "packed"):
            encoder.packing = packing if mode == "packed" else None
            vectors[mode], seconds[mode] = _pooled(encoder, texts, pool)
            rates[mode].append(len(texts) / seconds[mode])
        ratios.append(seconds["padded"] / seconds["packed"])
    encoder.packing = packing
    cosine = (vectors["packed"] * vectors["padded"]).sum(axis=1)
    return (
        f"{encoder.precision:>5} pool {pool:>5}: padded {statistics.median(rates['padded']):7.1f} texts/s, "
        f"packed {statistics.median(rates['packed']):7.1f} texts/s = {statistics.median(ratios):.2f}x "
        f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}); cosine mean {cosine.mean():.7f} min {cosine.min():.7f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--pools", default="72,2000", help="texts per encode call, comma-separated")
    parser.add_argument("--precisions", default="bf16,fp32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default=MODEL)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = get_settings()
    size = packed_size("cpu", settings)
    if size is None:
        raise SystemExit("EMBEDQ_PACKED_PASSES is off: unset it to compare packed passes with padded ones")
    texts = realistic_texts(args.n)
    print(
        f"{args.model}, {len(texts)} texts, {args.rounds} interleaved rounds, {args.threads} torch thread(s); "
        f"padded passes: {settings.max_batch_size} rows, {settings.max_batch_tokens} tokens; packed passes: "
        f"{size.pass_tokens} tokens, attention groups of {size.group_rows} rows, {size.group_tokens} tokens"
    )
    resolved = resolve_model(args.model, settings)
    for precision in args.precisions.split(","):
        encoder = Encoder(replace(resolved, precision=precision), batch_size=settings.max_batch_size)  # type: ignore[arg-type]
        if encoder.packed_size() is None:
            raise SystemExit(f"{args.model} does not run packed (workers/runtime/packed.py says which models do)")
        for pool in (int(p) for p in args.pools.split(",")):
            print(measure(encoder, texts, pool, args.rounds), flush=True)


if __name__ == "__main__":
    main()
