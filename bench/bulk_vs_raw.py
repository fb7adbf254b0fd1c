"""Throughput of an embedding job end to end (POST -> every vector in Postgres) against in-process encode.

    python -m bench.bulk_vs_raw [--n 3000] [--api http://127.0.0.1:8000] [--workers N]

Without --api it starts its own `embedq up` stack on free ports, its worker with `--workers` pool processes
(default: as `embedq up` sizes it, EMBEDQ_WORKER_CONCURRENCY). Every side embeds the same texts with the
same model: the job end to end, embedq's own ``Encoder`` in this process at the precision the worker reported
in /v1/models (what the pipeline could reach), and SentenceTransformer.encode (fp32). Printed: each rate, the
job's ratio to each, all measured in one run.
"""

from __future__ import annotations

import argparse
import os
import time

import httpx

from bench.baselines import MODEL, encoder_encode, sentence_transformers_encode, worker_precision
from bench.corpus import realistic_texts
from bench.stack import embedq_stack


def job_rate(base_url: str, texts: list[str], per_job: int = 2048, processes: int = 1) -> float:
    """Return texts/s of ``texts`` as jobs of ``per_job``, after a warm-up job for each of ``processes``.

    Pool processes load a model at their first task: one warm-up job each (sent at once, so each idle process
    takes one) leaves every process as warm as the in-process Encoder is after its own warm-up.
    """
    with httpx.Client(base_url=base_url, timeout=60) as client:
        warm = [
            client.post("/jobs/embeddings", json={"input": texts[:64], "model": MODEL}).json()["id"]
            for _ in range(processes)
        ]
        _wait(client, warm)
        t0 = time.perf_counter()
        ids = [
            client.post("/jobs/embeddings", json={"input": texts[i : i + per_job], "model": MODEL}).json()["id"]
            for i in range(0, len(texts), per_job)
        ]
        _wait(client, ids)
        elapsed = time.perf_counter() - t0
        stored = sum(_count_vectors(client, job_id) for job_id in ids)
    assert stored == len(texts), f"{stored} vectors stored for {len(texts)} texts"
    return len(texts) / elapsed


def _wait(client: httpx.Client, ids: list[str]) -> None:
    pending = set(ids)
    while pending:
        for job_id in list(pending):
            job = client.get(f"/jobs/{job_id}").json()
            if job["status"] == "succeeded":
                pending.discard(job_id)
            elif job["status"] in ("failed", "cancelled"):
                raise RuntimeError(f"job {job_id} ended {job['status']}: {job['error']}")
        time.sleep(0.05)


def _count_vectors(client: httpx.Client, job_id: str) -> int:
    count, offset = 0, 0
    while offset is not None:
        page = client.get(f"/jobs/{job_id}/results", params={"offset": offset, "limit": 1000}).json()
        count += sum(1 for item in page["data"] if item["embedding"] is not None)
        offset = page["next_offset"]
    return count


def _default_pool_processes() -> int:
    from app.cli.devices import detect_gpus, pool_processes
    from app.core.config import get_settings

    settings = get_settings()
    return pool_processes(settings.worker_concurrency, settings.device, detect_gpus(os.environ))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--api", default=None, help="a running API; default: start one")
    parser.add_argument("--workers", type=int, default=None, help="pool processes; default: embedq up's")
    args = parser.parse_args()

    texts = realistic_texts(args.n)
    processes = args.workers or _default_pool_processes()
    # A fresh stack's workers measure what precision auto becomes at their first load: give them time.
    with embedq_stack(args.api, workers=args.workers, timeout=900) as base_url:
        e2e = job_rate(base_url, texts, processes=processes)
        precision = worker_precision(base_url)
    own = encoder_encode(texts, precision)[0]
    raw = sentence_transformers_encode(texts)[0]
    print(f"texts: {len(texts)}  model: {MODEL}  worker precision: {precision}")
    print(f"raw SentenceTransformer.encode (fp32): {raw:8.1f} texts/s")
    print(f"embedq Encoder in process ({precision}): {own:8.1f} texts/s")
    print(f"job end to end (1 worker, {processes} pool processes): {e2e:8.1f} texts/s")
    print(f"ratio end-to-end / Encoder: {e2e / own:.2f}")
    print(f"ratio end-to-end / sentence-transformers: {e2e / raw:.2f}")


if __name__ == "__main__":
    main()
