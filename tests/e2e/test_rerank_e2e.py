"""End to end: a real API and a real sync worker serve TEI's /rerank and Cohere's /v1/rerank from tiny random
cross-encoders (BERT and XLM-R sequence classifiers), whose scores must equal sentence-transformers'
``CrossEncoder.predict`` on the same pairs; BGE-M3's MaxSim through the same route; and a collection search
with a rerank stage (its documents embedded by the session's worker)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cohere
import httpx
import numpy as np
import pytest
import torch
from support.processes import ManagedProcess
from support.sync_stack import SyncStack, sync_queue_env, sync_stack
from support.tiny_m3 import make_tiny_m3
from support.tiny_models import make_tiny_bert
from support.tiny_rerankers import make_tiny_reranker
from support.waiting import wait_job

from app.catalog.resolver import ResolvedModel
from workers.runtime.capabilities import load_encoder
from workers.runtime.m3 import rerank_maxsim

pytestmark = pytest.mark.e2e

TOL = 1e-5
QUERY = "what does the cat do in the house"
TEXTS = [
    "the cat is in the house",
    "a river in the mountain",
    "the dog and the cat",
    "music",
    "people of the city eat food in the night and the day, with the water of the river",
    "machine learning with vectors",
]
CROSS_ENCODERS = {"bert": "acme/ce-bert", "xlm-roberta": "acme/ce-xlmr"}


@pytest.fixture(scope="module")
def models(service_env: dict[str, str]) -> Path:
    """The session's models dir (the bulk worker resolves there too), holding this module's tiny models."""
    models_dir = Path(service_env["EMBEDQ_MODELS_DIR"])
    for kind, name in CROSS_ENCODERS.items():
        if not (models_dir / name).exists():
            make_tiny_reranker(models_dir / name, kind, seed=3, sentence_transformers=kind == "xlm-roberta")
    if not (models_dir / "acme" / "m3-rerank").exists():
        make_tiny_m3(models_dir / "acme" / "m3-rerank")
    if not (models_dir / "acme" / "bert-search").exists():
        make_tiny_bert(models_dir / "acme" / "bert-search")
    return models_dir


@pytest.fixture(scope="module")
def stack(service_env: dict[str, str], models: Path, worker: ManagedProcess) -> Iterator[SyncStack]:
    env = sync_queue_env(service_env, "rerank", EMBEDQ_RERANK_MAX_PAIRS="40", EMBEDQ_RERANK_MAX_TOKENS_PER_PAIR="48")
    with sync_stack(env, pool="solo") as running:
        yield running


@pytest.fixture(scope="module")
def http(stack: SyncStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api.base_url, timeout=120) as client:
        yield client


def predict(models: Path, name: str, texts: list[str], *, raw: bool = False) -> np.ndarray:
    """Return sentence-transformers' CrossEncoder.predict on (QUERY, text) pairs, cut at 48 tokens as the API's."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(models / name), max_length=48)
    activation = torch.nn.Identity() if raw else None
    return model.predict([(QUERY, text) for text in texts], activation_fn=activation, batch_size=4)


@pytest.mark.parametrize("kind", list(CROSS_ENCODERS))
def test_tei_rerank_equals_cross_encoder_predict_best_first(http: httpx.Client, models: Path, kind: str) -> None:
    name = CROSS_ENCODERS[kind]
    expected = predict(models, name, TEXTS)

    response = http.post("/rerank", json={"query": QUERY, "texts": TEXTS, "model": name, "return_text": True})

    assert response.status_code == 200, response.text
    ranked = response.json()
    assert [r["index"] for r in ranked] == list(np.argsort(-expected, kind="stable"))
    assert [r["text"] for r in ranked] == [TEXTS[r["index"]] for r in ranked]
    got = np.array([r["score"] for r in sorted(ranked, key=lambda r: r["index"])])
    assert np.abs(got - expected).max() <= TOL
    raw = http.post("/rerank", json={"query": QUERY, "texts": TEXTS, "model": name, "raw_scores": True}).json()
    got_raw = np.array([r["score"] for r in sorted(raw, key=lambda r: r["index"])])
    assert np.abs(got_raw - predict(models, name, TEXTS, raw=True)).max() <= TOL
    assert all("text" not in r for r in raw)


@pytest.mark.parametrize("kind", list(CROSS_ENCODERS))
def test_cohere_rerank_equals_cross_encoder_predict_with_top_n(http: httpx.Client, models: Path, kind: str) -> None:
    name = CROSS_ENCODERS[kind]
    expected = predict(models, name, TEXTS)
    documents = [text if i % 2 else {"text": text, "id": f"d{i}"} for i, text in enumerate(TEXTS)]

    response = http.post(
        "/v1/rerank",
        json={"model": name, "query": QUERY, "documents": documents, "top_n": 3, "return_documents": True},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["meta"] == {"billed_units": {"search_units": 1}} and len(body["id"]) == 36
    best = list(np.argsort(-expected, kind="stable")[:3])
    assert [r["index"] for r in body["results"]] == best
    for result in body["results"]:
        assert abs(result["relevance_score"] - expected[result["index"]]) <= TOL
        doc = documents[result["index"]]
        assert result["document"] == (doc if isinstance(doc, dict) else {"text": doc})
    bare = http.post("/v1/rerank", json={"model": name, "query": QUERY, "documents": TEXTS}).json()["results"]
    assert len(bare) == len(TEXTS) and all("document" not in r for r in bare)


def test_bge_m3_still_reranks_by_maxsim_through_the_same_route(http: httpx.Client, models: Path) -> None:
    local = load_encoder(ResolvedModel(name="acme/m3-rerank", path=models / "acme" / "m3-rerank", source="models_dir"))
    expected = rerank_maxsim(local, QUERY, TEXTS)

    old = http.post("/rerank", json={"query": QUERY, "candidates": TEXTS, "batch_size": 2, "model": "acme/m3-rerank"})
    new = http.post("/rerank", json={"query": QUERY, "texts": TEXTS, "model": "acme/m3-rerank"})

    assert old.status_code == 200, old.text
    assert old.json()["model"] == "acme/m3-rerank"
    np.testing.assert_allclose(old.json()["scores"], expected, atol=TOL)
    assert [r["index"] for r in new.json()] == list(np.argsort(-np.array(expected), kind="stable"))
    # The old body with a cross-encoder: its scores, in candidate order.
    legacy = http.post("/rerank", json={"query": QUERY, "candidates": TEXTS, "model": "acme/ce-bert"})
    np.testing.assert_allclose(legacy.json()["scores"], predict(models, "acme/ce-bert", TEXTS), atol=TOL)


def test_models_list_each_models_tasks(http: httpx.Client) -> None:
    listed = {m["id"]: m for m in http.get("/v1/models").json()["data"]}

    assert listed["acme/ce-bert"]["tasks"] == ["rerank"] and listed["acme/ce-bert"]["dimension"] is None
    assert listed["acme/ce-xlmr"]["tasks"] == ["rerank"]
    assert listed["acme/m3-rerank"]["tasks"] == ["embed", "rerank"]
    assert listed["acme/bert-search"]["tasks"] == ["embed"]


def test_a_repeated_text_scores_the_same_and_keeps_its_order(http: httpx.Client) -> None:
    # Padding moved the last digits of a score with the text's place in the batch: the later copy ranked first.
    texts = ["a bear", "a city at night with " + "many lights and " * 20 + "cars", "a bear", "rain"]
    ranked = http.post("/rerank", json={"query": "bears", "texts": texts, "model": "acme/ce-bert"}).json()
    scores = {r["index"]: r["score"] for r in ranked}
    assert scores[0] == scores[2]
    order = [r["index"] for r in ranked]
    assert order.index(0) < order.index(2), ranked


def test_bad_requests_get_a_4xx_naming_the_fix(http: httpx.Client) -> None:
    unknown = http.post("/v1/rerank", json={"model": "acme/nope", "query": "q", "documents": ["a"]})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    embedder = http.post("/v1/rerank", json={"model": "acme/bert-search", "query": "q", "documents": ["a"]})
    assert embedder.status_code == 400
    error = embedder.json()["error"]
    assert error["code"] == "model_not_reranker" and error["type"] == "invalid_request_error"
    assert "acme/ce-bert" in error["message"] and "acme/m3-rerank" in error["message"]
    assert "acme/bert-search" not in error["message"].split("Rerankers here:")[1]
    tei_embedder = http.post("/rerank", json={"model": "acme/bert-search", "query": "q", "texts": ["a"]})
    assert tei_embedder.status_code == 400 and tei_embedder.json()["code"] == "model_not_reranker"

    cases = [
        ("/v1/rerank", {"query": " ", "documents": ["a"]}, "query is empty"),
        ("/v1/rerank", {"query": "q", "documents": []}, "documents is empty"),
        ("/v1/rerank", {"query": "q", "documents": ["a", ""]}, "documents[1] is empty"),
        ("/rerank", {"query": "q", "texts": ["a", " \n "]}, "texts[1] is empty or only whitespace"),
        ("/v1/rerank", {"query": "q", "documents": ["a"] * 41}, "EMBEDQ_RERANK_MAX_PAIRS"),
        ("/rerank", {"query": "q", "texts": []}, "texts is empty"),
        ("/rerank", {"query": "", "texts": ["a"]}, "query is empty"),
    ]
    for path, body, says in cases:
        refused = http.post(path, json={**body, "model": "acme/ce-bert"})
        assert refused.status_code == 400, (body, refused.text)
        message = refused.json()["error"]["message"] if path.startswith("/v1") else refused.json()["detail"]
        assert says in message, message
    # TEI's truncation_direction, as Haystack's TEI ranker sends it: Right is what embedq does, Left is refused.
    right = http.post(
        "/rerank", json={"query": "q", "texts": ["a"], "model": "acme/ce-bert", "truncation_direction": "Right"}
    )
    assert right.status_code == 200, right.text
    left = http.post(
        "/rerank", json={"query": "q", "texts": ["a"], "model": "acme/ce-bert", "truncation_direction": "Left"}
    )
    assert left.status_code == 422 and "Right" in left.text, left.text
    both = http.post("/rerank", json={"query": "q", "texts": ["a"], "candidates": ["a"], "model": "acme/ce-bert"})
    assert both.status_code == 422 and '{"query": "...", "texts": ["...", "..."]}' in both.json()["detail"][0]["msg"]
    neither = http.post("/rerank", json={"query": "q", "model": "acme/ce-bert"})
    assert neither.status_code == 422 and "`texts`" in neither.text


def test_a_pair_over_the_limit_fails_alone_when_truncation_is_off(http: httpx.Client) -> None:
    long_text = " ".join(["cat"] * 100)
    good = {"query": QUERY, "texts": TEXTS[:4], "model": "acme/ce-bert", "truncate": False}
    bad = {**good, "texts": [TEXTS[0], long_text]}

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda body: http.post("/rerank", json=body), [good, bad, good, good, bad, good]))

    for body, answer in zip([good, bad, good, good, bad, good], answers, strict=True):
        if body is bad:
            assert answer.status_code == 400 and answer.json()["code"] == "input_too_long"
            assert "texts[1]" in answer.json()["detail"] and "48 tokens" in answer.json()["detail"]
        else:
            assert answer.status_code == 200 and len(answer.json()) == 4
    cut = http.post("/rerank", json={**bad, "truncate": True})
    assert cut.status_code == 200, cut.text


def test_a_reranker_gives_no_embeddings(http: httpx.Client) -> None:
    refused = http.post("/v1/embeddings", json={"model": "acme/ce-bert", "input": "a cat"})

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "model_not_embedding" and "/rerank" in refused.json()["error"]["message"]


def test_a_job_or_collection_with_a_reranker_is_refused_naming_the_fix(http: httpx.Client) -> None:
    job = http.post("/jobs/embeddings", json={"input": ["a"], "model": "acme/ce-bert"})
    collection = http.post("/collections", json={"name": "by-reranker", "model": "acme/ce-bert"})

    for refused in (job, collection):
        assert refused.status_code == 422, refused.text
        assert "is a reranker" in refused.json()["detail"] and "embedding model" in refused.json()["detail"]


def test_search_with_a_rerank_stage_returns_the_hits_in_the_rerankers_order(
    http: httpx.Client, models: Path, clean_state
) -> None:
    made = http.post("/collections", json={"name": "reranked", "model": "acme/bert-search"})
    assert made.status_code == 201, made.text
    body = "".join(json.dumps({"id": f"d{i}", "text": text}) + "\n" for i, text in enumerate(TEXTS)).encode()
    created = http.post(
        "/collections/reranked/documents", content=body, headers={"Content-Type": "application/x-ndjson"}
    )
    assert wait_job(http, created.json()["id"], interval=0.3)["status"] == "succeeded"
    query = {"query": QUERY, "top_k": 5}
    plain = http.post("/collections/reranked/search", json=query).json()["data"]

    response = http.post(
        "/collections/reranked/search", json={**query, "rerank": {"model": "acme/ce-xlmr", "top_n": 3}}
    )

    assert response.status_code == 200, response.text
    hits = response.json()["data"]
    first_k = {hit["document_id"]: hit for hit in plain}
    expected = predict(models, "acme/ce-xlmr", [hit["text"] for hit in plain])
    order = np.argsort(-expected, kind="stable")[:3]
    assert [hit["document_id"] for hit in hits] == [plain[i]["document_id"] for i in order]
    for hit, i in zip(hits, order, strict=True):
        assert abs(hit["rerank_score"] - expected[i]) <= TOL
        assert hit["score"] == pytest.approx(first_k[hit["document_id"]]["score"], abs=1e-6)
    by_vector = http.post("/collections/reranked/search", json={"vector": [0.1] * 32, "rerank": {}})
    assert by_vector.status_code == 422 and "send `query`" in by_vector.text
    embedder = http.post("/collections/reranked/search", json={**query, "rerank": {"model": "acme/bert-search"}})
    assert embedder.status_code == 400 and embedder.json()["code"] == "model_not_reranker"


def test_the_cohere_sdks_rerank_works_against_embedq(stack: SyncStack, models: Path) -> None:
    client = cohere.Client(api_key="unused", base_url=stack.api.base_url, timeout=120)

    response = client.rerank(model="acme/ce-bert", query=QUERY, documents=TEXTS, top_n=2, return_documents=True)

    expected = predict(models, "acme/ce-bert", TEXTS)
    assert [r.index for r in response.results] == list(np.argsort(-expected, kind="stable")[:2])
    for result in response.results:
        assert abs(result.relevance_score - expected[result.index]) <= TOL
        assert result.document is not None and result.document.text == TEXTS[result.index]
    assert response.meta is not None and response.meta.billed_units.search_units == 1
