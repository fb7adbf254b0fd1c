"""Every route that spends model time counts against the key's requests per minute (issue 16, point 3).

In-process API on the session's real Postgres and Redis; no sync worker runs, so a request that reaches the
sync queue stays there (the test sees it) and its caller gets a 504 after EMBEDQ_SYNC_TIMEOUT_S.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from support.settings import SettingsEnv

from app.core.config import get_settings
from app.core.db import session_scope
from app.keys.service import create_key
from app.main import create_app

# Every route that reaches the sync queue, with a body that gets it there; hybrid and rerank ones need a BGE-M3
# model or a reranker (the default model is refused with a 400 before the queue: they still count, as the whole
# router does).
SYNC_ROUTES: list[tuple[str, dict, bool]] = [
    ("/v1/embeddings", {"input": "a"}, True),
    ("/vectorize", {"text": "a"}, True),
    ("/vectorize-batch", {"items": ["a", "b"]}, True),
    ("/tokenize", {"input": "a"}, True),
    ("/collections/docs/search", {"query": "what is it"}, True),
    ("/collections/docs/search", {"query": "what is it", "mode": "hybrid"}, False),
    ("/vectorize-hybrid", {"text": "a"}, False),
    ("/vectorize-batch-hybrid", {"items": ["a"]}, False),
    ("/rerank", {"query": "q", "candidates": ["c"]}, False),
    ("/rerank", {"query": "q", "texts": ["c"]}, False),
    ("/v1/rerank", {"query": "q", "documents": ["c"]}, False),
]


@pytest.fixture
def client(clean_state, settings_env: SettingsEnv) -> Iterator[TestClient]:
    settings_env.set(EMBEDQ_AUTH_DISABLED="false", EMBEDQ_SYNC_TIMEOUT_S="0.3")
    settings_env.unset("EMBEDQ_API_KEYS")
    with TestClient(create_app()) as test_client:
        yield test_client


def key(rpm: int) -> dict[str, str]:
    with session_scope() as session:
        _, raw = create_key(session, tenant="acme", requests_per_minute=rpm)
    return {"Authorization": f"Bearer {raw}"}


@pytest.mark.parametrize(("path", "body", "reaches_queue"), SYNC_ROUTES, ids=[f"{p} {b}" for p, b, _ in SYNC_ROUTES])
def test_each_route_that_spends_model_time_counts_against_the_rpm(
    client: TestClient, redis_client: redis.Redis, path: str, body: dict, reaches_queue: bool
) -> None:
    setup = key(0)
    assert client.post("/collections", json={"name": "docs"}, headers=setup).status_code == 201
    queue = get_settings().sync_queue
    limited = key(1)
    before = redis_client.llen(queue)
    first = client.post(path, json=body, headers=limited)
    if reaches_queue:
        assert first.status_code == 504, first.text
        assert redis_client.llen(queue) == before + 1, "the request did not reach the sync queue"
    else:
        assert first.status_code in (400, 504), first.text
    second = client.post(path, json=body, headers=limited)
    assert second.status_code == 429, (path, second.text)
    assert int(second.headers["retry-after"]) >= 1 and redis_client.llen(queue) <= before + 1


def test_a_search_by_vector_spends_no_model_time_and_is_not_counted(client: TestClient) -> None:
    assert client.post("/collections", json={"name": "docs"}, headers=key(0)).status_code == 201
    limited = key(1)
    for _ in range(3):
        r = client.post("/collections/docs/search", json={"vector": [0.05] * 384}, headers=limited)
        assert r.status_code == 200, r.text
