"""GET /v1/models and /v1/models/{id} in-process: OpenAI's shapes, embedq's fields, aliases, errors, and the load
facts a worker process records in the session's real Redis. The hybrid routes' model check needs no worker."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from support.settings import SettingsEnv
from support.tiny_m3 import make_tiny_m3
from support.tiny_models import make_tiny_bert

from app.catalog.loads import KEY_PREFIX, LOAD_RECORD_TTL_S
from app.core.config import DEFAULT_MODEL
from app.main import create_app
from workers.runtime import registry


@pytest.fixture
def models_dir(tmp_path: Path, settings_env: SettingsEnv) -> Iterator[Path]:
    folder = tmp_path / "models"
    make_tiny_bert(folder / "acme" / "tiny-bert", pooling="cls")
    make_tiny_m3(folder / "tiny-m3")
    mapping = {
        "fast-bert": {"name": "acme/tiny-bert", "precision": "int8", "family": "e5"},
        "hybrid": {"name": "tiny-m3"},
    }
    settings_env.set(
        EMBEDQ_MODELS_DIR=str(folder),
        EMBEDQ_MODEL_MAPPING=json.dumps(mapping),
        EMBEDQ_ONNX_DIR=str(tmp_path / "onnx"),
    )
    registry.unload_all()
    yield folder
    registry.unload_all()


@pytest.fixture
def client(models_dir: Path, redis_client: redis.Redis) -> Iterator[TestClient]:
    for key in redis_client.scan_iter(match=KEY_PREFIX + "*"):
        redis_client.delete(key)
    with TestClient(create_app()) as test_client:
        yield test_client


def test_list_is_openai_shaped_with_embedq_fields(client: TestClient, models_dir: Path) -> None:
    body = client.get("/v1/models").json()

    assert body["object"] == "list"
    by_id = {model["id"]: model for model in body["data"]}
    assert {DEFAULT_MODEL, "all-MiniLM-L6-v2", "acme/tiny-bert", "tiny-m3", "fast-bert", "hybrid"} <= set(by_id)
    for model in body["data"]:
        assert model["object"] == "model" and isinstance(model["created"], int) and model["owned_by"]

    minilm = by_id[DEFAULT_MODEL]
    assert (minilm["source"], minilm["family"], minilm["dimension"], minilm["max_length"]) == (
        "package",
        "sentence-transformers",
        384,
        256,
    )
    assert (minilm["precision"], minilm["backend"], minilm["loaded"], minilm["device"]) == (
        "auto",
        "torch",
        False,
        None,
    )
    assert minilm["owned_by"] == "sentence-transformers"

    bert = by_id["acme/tiny-bert"]
    assert (bert["path"], bert["source"], bert["dimension"], bert["max_length"]) == (
        str(models_dir / "acme" / "tiny-bert"),
        "models_dir",
        32,
        64,
    )
    alias = by_id["fast-bert"]
    assert (alias["alias_of"], alias["precision"], alias["family"], alias["path"]) == (
        "acme/tiny-bert",
        "int8",
        "e5",
        bert["path"],
    )
    m3 = by_id["tiny-m3"]
    assert (m3["family"], m3["hybrid"], m3["max_length"]) == ("bge-m3", True, 128)
    assert by_id["hybrid"]["alias_of"] == "tiny-m3"


def test_one_model_by_name_with_a_slash_or_by_alias(client: TestClient) -> None:
    model = client.get("/v1/models/acme/tiny-bert")
    assert model.status_code == 200 and model.json()["id"] == "acme/tiny-bert"
    assert client.get("/v1/models/fast-bert").json()["alias_of"] == "acme/tiny-bert"


def test_unknown_and_unsafe_ids_get_openai_errors(client: TestClient) -> None:
    missing = client.get("/v1/models/acme/no-such-model")
    assert missing.status_code == 404
    assert "known models" in missing.json()["error"]["message"]
    unsafe = client.get("/v1/models/..%2F..%2Fetc")
    assert unsafe.status_code == 400 and "invalid model name" in unsafe.json()["error"]["message"]


def test_a_worker_load_shows_in_the_model_and_goes_on_unload(client: TestClient, redis_client: redis.Redis) -> None:
    encoder = registry.get_encoder("fast-bert")

    model = client.get("/v1/models/fast-bert").json()
    assert model["loaded"] is True
    assert (model["precision"], model["device"], model["family"]) == ("int8", "cpu", "e5")
    assert model["load_seconds"] == pytest.approx(encoder.load_seconds, abs=1e-3)
    (load,) = model["loads"]
    assert load["worker"].endswith(f":{os.getpid()}") and load["precision"] == "int8"
    assert 0 < redis_client.ttl(KEY_PREFIX + "acme/tiny-bert") <= LOAD_RECORD_TTL_S
    assert client.get("/v1/models/acme/tiny-bert").json()["loaded"] is False, "another precision: not that load"

    registry.unload_all()
    assert client.get("/v1/models/fast-bert").json()["loaded"] is False


def test_models_still_list_when_redis_is_down(client: TestClient, settings_env: SettingsEnv) -> None:
    settings_env.set(EMBEDQ_REDIS_URL="redis://127.0.0.1:1/0")
    body = client.get("/v1/models").json()
    assert any(model["id"] == "acme/tiny-bert" for model in body["data"])


@pytest.mark.parametrize("path", ["/vectorize-hybrid", "/vectorize-batch-hybrid", "/rerank"])
def test_hybrid_routes_refuse_models_without_m3_heads(path: str, client: TestClient, models_dir: Path) -> None:
    body = {"/vectorize-hybrid": {"text": "x"}, "/vectorize-batch-hybrid": {"items": ["x"]}}.get(
        path, {"query": "q", "candidates": ["x"]}
    )
    refused = client.post(path, json={**body, "model": "acme/tiny-bert"})
    assert refused.status_code == 400
    detail = refused.json()
    assert detail["code"] == ("model_not_reranker" if path == "/rerank" else "model_not_hybrid")
    assert "family sentence-transformers" in detail["detail"] and "tiny-m3" in detail["detail"]

    shutil.rmtree(models_dir / "tiny-m3")
    unknown = client.post(path, json={**body, "model": "tiny-m3"})
    assert unknown.status_code == 404
