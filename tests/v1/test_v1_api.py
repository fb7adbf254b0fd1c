"""The synchronous API in-process, without a worker: request checks, limits, and the error shapes.

/v1 paths answer errors in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``, with
request validation as 400); /vectorize, /tokenize and the rest keep ``{"detail": ...}``.
"""

from __future__ import annotations

import secrets
import time

import pytest
from fastapi.testclient import TestClient
from support.settings import SettingsEnv

from app.main import create_app


@pytest.fixture
def env(settings_env: SettingsEnv, clean_state: None) -> SettingsEnv:
    """Return the test's settings overrides, with sync requests sent to a queue nobody consumes."""
    settings_env.set(EMBEDQ_SYNC_QUEUE=f"sync-nobody-{secrets.token_hex(3)}", EMBEDQ_SYNC_TIMEOUT_S="0.3")
    return settings_env


@pytest.fixture
def client(env: SettingsEnv) -> TestClient:
    return TestClient(create_app(), raise_server_exceptions=False)


def openai_error(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "param", "code"} <= set(body["error"]), body
    return body["error"]


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"input": []}, "input", "not empty"),
        ({"input": ["a", 1]}, "input", "mixes types"),
        ({"input": [True]}, "input", "input must be a string"),
        ({"input": {"text": "a"}}, "input", "input must be a string"),
        ({"input": [[1, 2], [3, "x"]]}, "input", "input"),
        ({"input": ["ok", ""]}, "input", "input[1] is an empty string"),
        ({"input": [[1], []]}, "input", "input[1] is an empty array"),
        ({"input": [[5, -1]]}, "input", "negative token id"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format", "'float' or 'base64'"),
        ({"input": "a", "dimensions": 0}, "dimensions", "greater than or equal to 1"),
        ({"input": "a", "dimensions": 8}, "dimensions", "does not support dimensions"),
        # Strict types, as OpenAI's: not coerced into 1 dimension, 128 or true.
        ({"input": "a", "dimensions": True}, "dimensions", "valid integer"),
        ({"input": "a", "dimensions": "128"}, "dimensions", "valid integer"),
        ({"input": "a", "is_query": "yes"}, "is_query", "valid boolean"),
        ({"input": "a", "model": "../../etc/passwd"}, "model", "invalid model name"),
        ({}, "input", "Field required"),
    ],
)
def test_bad_embeddings_requests_are_openai_shaped_400s(
    client: TestClient, body: dict, param: str, needle: str
) -> None:
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == 400, r.text
    error = openai_error(r)
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert needle in error["message"]


def test_unknown_model_is_an_openai_404_model_not_found(client: TestClient) -> None:
    r = client.post("/v1/embeddings", json={"input": "a", "model": "no-such-model"})
    assert r.status_code == 404
    error = openai_error(r)
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert "known models" in error["message"]


def test_a_body_that_is_not_json_is_a_400(client: TestClient) -> None:
    r = client.post("/v1/embeddings", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and openai_error(r)["type"] == "invalid_request_error"
    cut = openai_error(
        client.post("/v1/embeddings", content=b'{"input":', headers={"content-type": "application/json"})
    )
    assert cut["param"] is None and "not valid JSON (byte 9" in cut["message"], cut  # a byte offset is no parameter


def test_a_bad_query_parameter_is_named_by_its_name(client: TestClient) -> None:
    error = openai_error(client.get("/v1/files", params={"limit": 0}))
    assert error["param"] == "limit" and error["message"].startswith("limit: "), error


def test_an_unknown_model_is_model_not_found_on_v1_models_too(client: TestClient) -> None:
    r = client.get("/v1/models/no-such-model")
    assert r.status_code == 404 and (openai_error(r)["code"], openai_error(r)["param"]) == ("model_not_found", "model")


def test_limits_are_settings(env: SettingsEnv) -> None:
    env.set(EMBEDQ_MAX_INPUTS_PER_REQUEST="3", EMBEDQ_MAX_INPUT_CHARS="10")
    client = TestClient(create_app())
    many = client.post("/v1/embeddings", json={"input": ["a"] * 4})
    assert many.status_code == 400 and "at most 3 per request" in openai_error(many)["message"]
    long = client.post("/v1/embeddings", json={"input": ["a", "b" * 11]})
    assert long.status_code == 400 and openai_error(long)["message"].startswith("input[1] has 11 characters")
    assert client.post("/vectorize-batch", json={"items": ["a"] * 4}).json()["detail"].startswith("input has 4")


def test_a_request_no_worker_answers_is_a_504_that_says_what_to_check(client: TestClient) -> None:
    r = client.post("/v1/embeddings", json={"input": "hello"})
    assert r.status_code == 504
    error = openai_error(r)
    assert (error["type"], error["code"]) == ("server_error", "timeout")
    assert "no sync worker answered within 0.3s" in error["message"] and "sync-nobody-" in error["message"]
    plain = client.post("/vectorize", json={"text": "hello"})
    assert plain.status_code == 504 and "no sync worker answered" in plain.json()["detail"]


def test_paths_outside_v1_keep_the_detail_shape(client: TestClient) -> None:
    r = client.post("/vectorize", json={"txt": "a"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], list)
    r = client.post("/tokenize", json={"input": "a", "model": "no-such-model"})
    assert r.status_code == 404 and "known models" in r.json()["detail"]
    assert client.get("/jobs/not-a-uuid").status_code == 422
    assert "detail" in client.get("/jobs/not-a-uuid").json()


def test_unknown_v1_paths_and_methods_are_openai_shaped(client: TestClient) -> None:
    missing = client.post("/v1/completions", json={})
    assert missing.status_code == 404 and openai_error(missing)["code"] == "not_found"
    wrong_method = client.get("/v1/embeddings")
    assert wrong_method.status_code == 405 and openai_error(wrong_method)["type"] == "invalid_request_error"


def test_api_keys_guard_the_sync_api_with_an_openai_shaped_401(env: SettingsEnv) -> None:
    env.set(EMBEDQ_API_KEYS='["k-123"]', EMBEDQ_AUTH_DISABLED="false")
    client = TestClient(create_app())
    r = client.post("/v1/embeddings", json={"input": "a"})
    assert r.status_code == 401
    error = openai_error(r)
    assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    assert client.post("/vectorize", json={"text": "a"}).json()["detail"].startswith("missing or unknown API key")
    authorized = client.post("/v1/embeddings", json={"input": "a"}, headers={"Authorization": "Bearer k-123"})
    assert authorized.status_code == 504  # past the key check: no worker consumes this test's queue


def test_admins_model_checks_are_remembered_for_a_second_and_forgotten_with_their_settings() -> None:
    from app.core.config import Settings
    from app.v1.service import _ResolvedNames

    names = _ResolvedNames(ttl_s=0.2)
    first, second = Settings(), Settings()
    assert names.get("m", first) is None
    names.put("m", "resolved-m", first)
    assert names.get("m", first) == "resolved-m"
    assert names.get("m", second) is None  # other settings: their own answers
    names.put("m", "resolved-m", second)
    time.sleep(0.25)
    assert names.get("m", second) is None
