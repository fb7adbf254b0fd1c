"""End to end: a real API and a real sync worker serve /vectorize-hybrid, /vectorize-batch-hybrid and /rerank from a
tiny BGE-M3 folder reached through an alias, and GET /v1/models shows what the worker recorded when it loaded it."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.sync_stack import SyncStack, sync_queue_env, sync_stack
from support.tiny_m3 import make_tiny_m3

from app.catalog.resolver import ResolvedModel
from workers.runtime.capabilities import load_encoder
from workers.runtime.encoder import Encoder
from workers.runtime.m3 import encode_hybrid, rerank_maxsim

pytestmark = pytest.mark.e2e

TEXTS = ["the cat and the dog", "hybrid search with sparse vectors", "a"]
TOL = 1e-5


@pytest.fixture(scope="module")
def m3_env(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    models = tmp_path_factory.mktemp("m3-models")
    make_tiny_m3(models / "acme" / "tiny-m3")
    return sync_queue_env(
        service_env,
        "m3",
        EMBEDQ_MODELS_DIR=str(models),
        EMB_PROVIDER_MODEL_MAPPING=json.dumps({"m3": {"name": "acme/tiny-m3", "family": "bge-m3"}}),
    )


@pytest.fixture(scope="module")
def m3_stack(m3_env: dict[str, str]) -> Iterator[SyncStack]:
    with sync_stack(m3_env, concurrency=4) as stack:
        yield stack


@pytest.fixture(scope="module")
def http(m3_stack: SyncStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=m3_stack.api.base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def local(m3_env: dict[str, str]) -> Encoder:
    folder = Path(m3_env["EMBEDQ_MODELS_DIR"]) / "acme" / "tiny-m3"
    return load_encoder(ResolvedModel(name="acme/tiny-m3", path=folder, source="models_dir"))


def test_hybrid_endpoints_equal_the_runtime(http: httpx.Client, local: Encoder) -> None:
    expected = encode_hybrid(local, TEXTS, return_colbert=True)
    assert expected.colbert is not None

    one = http.post("/vectorize-hybrid", json={"text": TEXTS[1], "model": "m3", "return_colbert": True})
    assert one.status_code == 200, one.text
    body = one.json()
    assert (body["model"], body["dimension"]) == ("m3", 32)
    np.testing.assert_allclose(body["dense"], expected.dense[1], atol=TOL)
    assert {int(k): v for k, v in body["sparse"].items()} == pytest.approx(expected.sparse[1], abs=TOL)
    np.testing.assert_allclose(body["colbert"], expected.colbert[1], atol=TOL)

    batch = http.post("/vectorize-batch-hybrid", json={"items": TEXTS, "model": "m3"})
    assert batch.status_code == 200, batch.text
    items = batch.json()["data"]
    assert len(items) == len(TEXTS) and all(item["colbert"] is None for item in items)
    for row, item in enumerate(items):
        np.testing.assert_allclose(item["dense"], expected.dense[row], atol=TOL)
        assert len(item["sparse_tokens"]) == len(item["sparse"]) == len(expected.sparse[row])


def test_rerank_endpoint_scores_in_candidate_order(http: httpx.Client, local: Encoder) -> None:
    candidates = [*TEXTS, "dense vectors and a dog"]
    response = http.post(
        "/rerank", json={"query": "sparse dog", "candidates": candidates, "batch_size": 2, "model": "m3"}
    )
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["scores"], rerank_maxsim(local, "sparse dog", candidates), atol=TOL)


def test_an_embedding_model_gets_a_400_naming_the_rerankers(http: httpx.Client) -> None:
    refused = http.post("/rerank", json={"query": "q", "candidates": ["x"], "model": "all-MiniLM-L6-v2"})
    assert refused.status_code == 400
    assert refused.json()["code"] == "model_not_reranker" and "acme/tiny-m3" in refused.json()["detail"]


def test_models_endpoint_reports_the_workers_load(http: httpx.Client, m3_stack: SyncStack) -> None:
    http.post("/vectorize-hybrid", json={"text": "warm", "model": "m3"}).raise_for_status()

    model = http.get("/v1/models/m3").json()

    assert (model["id"], model["alias_of"], model["family"], model["hybrid"]) == ("m3", "acme/tiny-m3", "bge-m3", True)
    assert model["loaded"] is True and model["device"] == "cpu" and model["precision"] == "fp32"
    assert model["load_seconds"] > 0 and model["dimension"] == 32 and model["max_length"] == 128
    # The thread-pool worker loads in its own process: the load names that process, as this test started it.
    assert [load["worker"] for load in model["loads"]] == [f"{socket.gethostname()}:{m3_stack.worker.pid}"]
    listed = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert listed["m3"]["loaded"] is True and listed["acme/tiny-m3"]["family"] == "bge-m3"
