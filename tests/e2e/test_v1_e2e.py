"""End to end: the official `openai` client and plain HTTP against a real API process and a real thread-pool
sync worker, with the session's prefork worker running the job path for comparison. Real MiniLM throughout.

The sync processes use a queue of this module's own, so no other worker takes their requests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient
from support.processes import ManagedProcess
from support.settings import SettingsEnv
from support.sync_stack import SyncStack, sync_queue_env, sync_stack
from support.texts import mixed_texts
from support.waiting import wait_job, wait_until

from app.core.config import DEFAULT_MODEL
from app.inference.dispatch import request
from app.inference.errors import InferenceTimeoutError
from app.main import create_app

pytestmark = pytest.mark.e2e

KEY = "sk-embedq-e2e"
CLOSE = {"rtol": 0, "atol": 2e-6}


@pytest.fixture(scope="module")
def sync_env(service_env: dict[str, str], worker: ManagedProcess) -> dict[str, str]:
    """Return the environment of this module's sync processes (``worker`` runs the job path)."""
    return sync_queue_env(service_env, "e2e")


@pytest.fixture(scope="module")
def sync(sync_env: dict[str, str]) -> Iterator[SyncStack]:
    api_settings = {
        "EMBEDQ_API_KEYS": json.dumps([KEY]),
        "EMBEDQ_AUTH_DISABLED": "false",
        "EMBEDQ_MATRYOSHKA_MODELS": "*matryoshka*,*MiniLM*",
    }
    # The worker as `embedq up` runs it (the other e2e modules run theirs on a thread pool, which works as well).
    with sync_stack(sync_env, api_settings, pool="solo") as stack:
        yield stack


@pytest.fixture
def http(sync: SyncStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sync.api.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as c:
        yield c


@pytest.fixture
def client(sync: SyncStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{sync.api.base_url}/v1", api_key=KEY, timeout=120, max_retries=0)


@pytest.fixture
def in_process(sync_env: dict[str, str], sync: SyncStack, settings_env: SettingsEnv) -> SettingsEnv:
    """Return the settings overrides of an in-process API that uses this module's sync worker."""
    settings_env.set(EMBEDQ_SYNC_QUEUE=sync_env["EMBEDQ_SYNC_QUEUE"])
    return settings_env


def nonempty_texts(count: int, seed: int) -> list[str]:
    """Return mixed texts without the empty one (an empty input is refused)."""
    return [text for text in mixed_texts(count + 16, seed=seed) if text][:count]


def job_vectors(http: httpx.Client, texts: list[str]) -> np.ndarray:
    """Return the vectors the asynchronous job path computes for ``texts``."""
    created = http.post("/jobs/embeddings", json={"input": texts, "model": DEFAULT_MODEL})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    job = wait_job(http, job_id)
    assert job["status"] == "succeeded", job
    page = http.get(f"/jobs/{job_id}/results", params={"limit": len(texts)}).json()
    return np.asarray([item["embedding"] for item in page["data"]], dtype=np.float32)


def test_openai_client_float_and_base64_equal_the_job_path(client: openai.OpenAI, http: httpx.Client) -> None:
    texts = [*nonempty_texts(24, seed=11), "word " * 400]
    floats = client.embeddings.create(model=DEFAULT_MODEL, input=texts, encoding_format="float")
    decoded = client.embeddings.create(model=DEFAULT_MODEL, input=texts)  # the client asks for base64 and decodes it
    as_floats = np.asarray([d.embedding for d in floats.data], dtype=np.float32)
    from_base64 = np.asarray([d.embedding for d in decoded.data], dtype=np.float32)
    assert [d.index for d in floats.data] == list(range(len(texts))) and floats.model == DEFAULT_MODEL
    np.testing.assert_array_equal(as_floats, from_base64)
    np.testing.assert_allclose(as_floats, job_vectors(http, texts), **CLOSE)

    counted = http.post("/tokenize", json={"input": texts}).json()
    limit = counted["max_tokens"]
    assert floats.usage.prompt_tokens == sum(min(item["count"], limit) for item in counted["data"])
    assert floats.usage.total_tokens == floats.usage.prompt_tokens


def test_dimensions_shorten_and_normalize_again(client: openai.OpenAI) -> None:
    full = client.embeddings.create(model=DEFAULT_MODEL, input="vector search", encoding_format="float")
    short = client.embeddings.create(model=DEFAULT_MODEL, input="vector search", dimensions=64)
    head = np.asarray(full.data[0].embedding[:64], dtype=np.float32)
    np.testing.assert_allclose(short.data[0].embedding, head / np.linalg.norm(head), **CLOSE)
    with pytest.raises(openai.BadRequestError, match="ask for 1 to 384"):
        client.embeddings.create(model=DEFAULT_MODEL, input="x", dimensions=385)


def test_token_id_input_embeds_like_its_text(client: openai.OpenAI, http: httpx.Client) -> None:
    texts = ["The quick brown fox.", "Embeddings map sentences to vectors."]
    counted = http.post("/tokenize", json={"input": texts, "add_special_tokens": False}).json()["data"]
    ids = [item["ids"] for item in counted]
    by_ids = client.embeddings.create(model=DEFAULT_MODEL, input=ids, encoding_format="float")
    by_text = client.embeddings.create(model=DEFAULT_MODEL, input=texts, encoding_format="float")
    np.testing.assert_allclose([d.embedding for d in by_ids.data], [d.embedding for d in by_text.data], **CLOSE)
    single = client.embeddings.create(model=DEFAULT_MODEL, input=ids[0], encoding_format="float")
    np.testing.assert_allclose(single.data[0].embedding, by_text.data[0].embedding, **CLOSE)


def test_openai_client_errors_are_typed(client: openai.OpenAI, sync: SyncStack) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=DEFAULT_MODEL, input=["fine", ""])
    assert "input[1] is an empty string" in str(bad.value)
    with pytest.raises(openai.NotFoundError, match="known models"):
        client.embeddings.create(model="no-such-model", input="x")
    stranger = openai.OpenAI(base_url=f"{sync.api.base_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.embeddings.create(model=DEFAULT_MODEL, input="x")


def test_models_list_shows_the_models(client: openai.OpenAI) -> None:
    ids = {model.id for model in client.models.list()}
    assert DEFAULT_MODEL in ids


def test_vectorize_vectorize_batch_and_tokenize(http: httpx.Client) -> None:
    one = http.post("/vectorize", json={"text": "hello world", "is_query": True})
    assert one.status_code == 200, one.text
    assert one.json()["dimension"] == 384 and one.json()["model"] == DEFAULT_MODEL
    many = http.post("/vectorize-batch", json={"items": ["hello world", "goodbye"], "is_query": False}).json()
    # MiniLM has no prompts: is_query changes nothing for it.
    np.testing.assert_allclose(many["vectors"][0], one.json()["vector"], **CLOSE)
    assert len(many["vectors"]) == 2
    tokens = http.post("/tokenize", json={"input": "Hello embedq"}).json()
    (item,) = tokens["data"]
    assert item["tokens"] == ["[CLS]", "hello", "em", "##bed", "##q", "[SEP]"] and tokens["total_tokens"] == 6
    assert len(item["ids"]) == item["count"] == 6  # what a client computes agrees with what it is told
    bare = http.post("/tokenize", json={"input": "Hello embedq", "add_special_tokens": False}).json()
    assert bare["data"][0]["tokens"] == ["hello", "em", "##bed", "##q"] and bare["data"][0]["count"] == 6


def test_truncated_inputs_are_counted_in_a_header(http: httpx.Client) -> None:
    r = http.post("/v1/embeddings", json={"input": ["short", "word " * 400, "word " * 300]})
    assert r.status_code == 200 and r.headers["x-embedq-truncated-inputs"] == "2"
    assert http.post("/vectorize", json={"text": "short"}).headers["x-embedq-truncated-inputs"] == "0"


def test_concurrent_requests_are_batched_together_and_each_gets_its_own_vectors(http: httpx.Client) -> None:
    texts = nonempty_texts(128, seed=5)
    groups = [texts[i : i + 4] for i in range(0, len(texts), 4)]

    def send(group: list[str]) -> tuple[int, list[list[float]]]:
        r = http.post("/v1/embeddings", json={"input": group, "encoding_format": "float"})
        assert r.status_code == 200, r.text
        return int(r.headers["x-embedq-batch-requests"]), [d["embedding"] for d in r.json()["data"]]

    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        answers = list(pool.map(send, groups))
    assert max(batched for batched, _ in answers) > 1, [batched for batched, _ in answers]
    got = np.asarray([vector for _, vectors in answers for vector in vectors], dtype=np.float32)
    alone = np.asarray(
        [d["embedding"] for d in http.post("/v1/embeddings", json={"input": texts}).json()["data"]], dtype=np.float32
    )
    np.testing.assert_allclose(got, alone, **CLOSE)


def test_with_truncation_off_an_overlong_input_is_a_400_naming_it(in_process: SettingsEnv) -> None:
    in_process.set(EMBEDQ_TRUNCATE="false")
    r = TestClient(create_app()).post("/v1/embeddings", json={"input": ["short", "word " * 400]})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["message"].startswith("input[1] is 402 tokens long") and error["code"] == "input_too_long"


def test_a_request_still_queued_when_its_caller_gives_up_is_dropped_unrun(
    in_process: SettingsEnv, redis_client
) -> None:
    async def scenario() -> InferenceTimeoutError:
        # A long batch keeps the worker busy; the short request behind it times out before its turn.
        busy = asyncio.create_task(request("embed", DEFAULT_MODEL, {"texts": ["word " * 300] * 512}, timeout=600))
        await asyncio.sleep(1.0)
        with pytest.raises(InferenceTimeoutError) as caught:
            await request("embed", DEFAULT_MODEL, {"texts": ["behind the long batch"]}, timeout=0.3)
        await busy
        return caught.value

    timed_out = asyncio.run(scenario())
    task_id = timed_out.extra["request_id"]
    stored = wait_until(
        lambda: redis_client.get(f"celery-task-meta-{task_id}"),
        60,
        "the worker never answered the dropped request",
        until=lambda answer: answer is not None,
        interval=0.1,
    )
    reply = json.loads(stored)["result"]
    assert reply["error"]["status"] == 504 and "stopped waiting before the request ran" in reply["error"]["message"]
