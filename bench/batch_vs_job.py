"""Throughput of a Batch API batch against the same inputs as one embeddings job, end to end, in one run.

    python bench/batch_vs_job.py [--lines 10000] [--api http://127.0.0.1:8000] [--workers 1]

The batch: a JSONL file of ``--lines`` /v1/embeddings requests of 1 to 8 inputs each (realistic prose),
uploaded (POST /v1/files), run (POST /v1/batches) and polled until ``completed``, its output file written.
The job: every input of those requests in one POST /jobs/embeddings, polled until ``succeeded``, its vectors
in Postgres. Both include their submission and neither its download. Without --api it starts its own
`embedq up` stack on free ports (EMBEDQ_MAX_INPUTS_PER_JOB raised so that the job takes every input).
"""

from __future__ import annotations

import argparse
import json
import random
import time

import httpx

from bench.corpus import realistic_texts
from bench.stack import embedq_stack

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def requests_of(lines: int, seed: int = 0) -> list[list[str]]:
    """Return ``lines`` requests of 1 to 8 distinct texts each."""
    rng = random.Random(seed)
    sizes = [rng.randint(1, 8) for _ in range(lines)]
    texts = realistic_texts(sum(sizes))
    out, at = [], 0
    for size in sizes:
        out.append(texts[at : at + size])
        at += size
    return out


def batch_file(requests: list[list[str]]) -> bytes:
    lines = (
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings", "body": {"input": inputs, "model": MODEL}}
        for i, inputs in enumerate(requests)
    )
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def batch_seconds(client: httpx.Client, content: bytes) -> tuple[float, dict]:
    """Return the seconds from upload to ``completed`` and the batch's last view."""
    t0 = time.perf_counter()
    file = client.post("/v1/files", files={"file": ("bench.jsonl", content)}, data={"purpose": "batch"}).json()
    body = {"input_file_id": file["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"}
    batch = client.post("/v1/batches", json=body).json()
    while batch["status"] not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.2)
        batch = client.get(f"/v1/batches/{batch['id']}").json()
    elapsed = time.perf_counter() - t0
    if batch["status"] != "completed" or batch["request_counts"]["failed"]:
        raise RuntimeError(f"batch ended {batch['status']}: {batch}")
    return elapsed, batch


def job_seconds(client: httpx.Client, texts: list[str]) -> float:
    """Return the seconds from POST /jobs/embeddings to ``succeeded``."""
    t0 = time.perf_counter()
    job = client.post("/jobs/embeddings", json={"input": texts, "model": MODEL}).json()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.2)
        job = client.get(f"/jobs/{job['id']}").json()
    elapsed = time.perf_counter() - t0
    if job["status"] != "succeeded":
        raise RuntimeError(f"job ended {job['status']}: {job.get('error')}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--api", default=None, help="a running API; default: start one")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    requests = requests_of(args.lines)
    texts = [t for inputs in requests for t in inputs]
    content = batch_file(requests)
    env = {"EMBEDQ_MAX_INPUTS_PER_JOB": str(len(texts))}
    with (
        embedq_stack(args.api, workers=args.workers, extra_env=env) as base_url,
        httpx.Client(base_url=base_url, timeout=600) as client,
    ):
        # Warm both paths (model load) on a few requests first.
        batch_seconds(client, batch_file(requests_of(8, seed=1)))
        job_seconds(client, texts[:64])
        job_s = job_seconds(client, texts)
        batch_s, batch = batch_seconds(client, content)
    job_rate, batch_rate = len(texts) / job_s, len(texts) / batch_s
    print(f"lines: {args.lines}  texts: {len(texts)}  file: {len(content) / 1e6:.1f} MB  model: {MODEL}")
    print(f"one embeddings job:  {job_s:7.1f} s  {job_rate:8.1f} texts/s")
    print(f"batch ({batch['request_counts']['completed']} requests): {batch_s:7.1f} s  {batch_rate:8.1f} texts/s")
    print(f"ratio batch / job: {batch_rate / job_rate:.2f}")


if __name__ == "__main__":
    main()
