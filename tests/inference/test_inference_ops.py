"""The worker's ``embed`` and ``tokenize`` ops and its request handler, in-process on real models.

MiniLM (packaged) for parity with the runtime's own encode, a tiny random E5-named BERT for prompts.
"""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.settings import SettingsEnv
from support.texts import mixed_texts
from support.tiny_models import make_tiny_bert

from app.catalog.resolver import ResolvedModel, resolve_model
from app.core.config import DEFAULT_MODEL, Settings
from workers.inference.embed_ops import embed, tokenize
from workers.inference.ops import OpError, Payload, Result, get_op, register_op, weight_of
from workers.inference.service import handle_request
from workers.inference.token_ids import content_ids
from workers.runtime.batching import budget_chunks
from workers.runtime.encoder import Encoder

CLOSE = {"rtol": 0, "atol": 2e-6}


@register_op("test_thread_of")
def _thread_of(encoder: Encoder, payloads: list[Payload]) -> list[Result | OpError]:
    return [{"thread": threading.get_ident(), "model": encoder.name} for _ in payloads]


@pytest.fixture(scope="module")
def minilm() -> Encoder:
    return Encoder(resolve_model(DEFAULT_MODEL, Settings(models_dir=Path("/nonexistent"))))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [*mixed_texts(40, seed=3)[:39], "x " * 400]


def vectors_of(result: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(result["embeddings"])
    return np.frombuffer(raw, dtype="<f4").reshape(result["count"], result["dimension"])


def one(encoder: Encoder, payload: dict[str, Any]) -> dict[str, Any]:
    (result,) = embed(encoder, [payload])
    assert not isinstance(result, OpError), result
    return result


def rejection(encoder: Encoder, payload: dict[str, Any]) -> OpError:
    (result,) = embed(encoder, [payload])
    assert isinstance(result, OpError), result
    return result


def test_budget_chunks_sort_longest_first_and_respect_rows_and_padded_tokens() -> None:
    lengths = [5, 100, 3, 50, 50, 2, 200]
    chunks = budget_chunks(lengths, max_rows=3, max_tokens=120)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
    assert chunks == [[6], [1], [3, 4], [0, 2, 5]]
    for chunk in chunks:
        widths = [lengths[i] for i in chunk]
        assert widths == sorted(widths, reverse=True)
        assert len(chunk) == 1 or len(chunk) * widths[0] <= 120


def test_embed_equals_the_runtime_encode_and_counts_tokens_with_the_tokenizer(
    minilm: Encoder, texts: list[str]
) -> None:
    result = one(minilm, {"texts": texts})
    np.testing.assert_allclose(vectors_of(result), minilm.encode(texts), **CLOSE)
    full = minilm.count_tokens(texts, truncate=False)
    assert result["prompt_tokens"] == sum(min(n, minilm.max_seq_length) for n in full)
    assert result["truncated"] == [i for i, n in enumerate(full) if n > minilm.max_seq_length]
    assert result["truncated"], "the texts should include some longer than 256 tokens"


def test_payloads_of_one_batch_share_forward_passes_and_keep_their_own_vectors(
    minilm: Encoder, texts: list[str]
) -> None:
    payloads = [{"texts": texts[i : i + 7]} for i in range(0, len(texts), 7)]
    results = embed(minilm, payloads)
    for payload, result in zip(payloads, results, strict=True):
        assert not isinstance(result, OpError)
        np.testing.assert_allclose(vectors_of(result), minilm.encode(payload["texts"]), **CLOSE)


def test_without_truncation_an_overlong_input_is_refused_by_index(minilm: Encoder) -> None:
    error = rejection(minilm, {"texts": ["short", "word " * 300, "word " * 400], "truncate": False})
    assert (error.status, error.param, error.code) == (400, "input", "input_too_long")
    assert error.message.startswith("input[1] is 302 tokens long") and "EMBEDQ_TRUNCATE=false" in error.message


def test_a_request_over_the_token_limit_is_refused(minilm: Encoder) -> None:
    error = rejection(minilm, {"texts": ["one two three"] * 4, "max_tokens": 19})
    assert error.code == "too_many_tokens" and "20 tokens long in all" in error.message


def test_dimensions_keep_the_first_coordinates_and_normalize_again(minilm: Encoder) -> None:
    result = one(minilm, {"texts": ["hello world", "vector search"], "dimensions": 16})
    full = minilm.encode(["hello world", "vector search"])[:, :16]
    want = full / np.linalg.norm(full, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors_of(result), want, **CLOSE)
    assert result["dimension"] == 16
    for bad in (0, minilm.dimension + 1):
        assert rejection(minilm, {"texts": ["x"], "dimensions": bad}).param == "dimensions"


def test_token_ids_embed_like_the_text_they_come_from(minilm: Encoder, texts: list[str]) -> None:
    ids = content_ids(minilm.tokenizer, texts)
    by_ids = one(minilm, {"token_ids": ids})
    by_text = one(minilm, {"texts": texts})
    np.testing.assert_allclose(vectors_of(by_ids), vectors_of(by_text), **CLOSE)
    assert (by_ids["prompt_tokens"], by_ids["truncated"]) == (by_text["prompt_tokens"], by_text["truncated"])


def test_token_ids_outside_the_vocabulary_are_refused_by_index(minilm: Encoder) -> None:
    error = rejection(minilm, {"token_ids": [[101], [7592, len(minilm.tokenizer)]]})
    assert error.code == "invalid_token_id" and error.message.startswith("input[1] holds token id 30522")


def test_a_rejected_payload_leaves_the_others_of_its_batch_alone(minilm: Encoder) -> None:
    good, bad, also_good = embed(
        minilm, [{"texts": ["alpha"]}, {"texts": ["x"], "dimensions": 9999}, {"token_ids": [[7592]]}]
    )
    assert isinstance(bad, OpError) and bad.param == "dimensions"
    np.testing.assert_allclose(vectors_of(good), minilm.encode(["alpha"]), **CLOSE)
    np.testing.assert_allclose(vectors_of(also_good), minilm.encode(["hello"]), **CLOSE)


def test_tokenize_gives_ids_tokens_and_the_full_count(minilm: Encoder) -> None:
    (result,) = tokenize(minilm, [{"texts": ["Hello embedq", "word " * 300]}])
    assert not isinstance(result, OpError)
    short, long = result["data"]
    assert short == {
        "ids": [101, 7592, 7861, 8270, 4160, 102],
        "tokens": ["[CLS]", "hello", "em", "##bed", "##q", "[SEP]"],
        "count": 6,
        "truncated": False,
    }
    assert (long["count"], long["truncated"], result["max_tokens"]) == (302, True, 256)
    assert all(len(item["ids"]) == item["count"] for item in result["data"])
    (bare,) = tokenize(minilm, [{"texts": ["Hello embedq"], "add_special_tokens": False}])
    assert not isinstance(bare, OpError)
    assert bare["data"][0]["ids"] == [7592, 7861, 8270, 4160] and bare["data"][0]["count"] == 6


def test_is_query_applies_the_family_prompt(tmp_path: Path) -> None:
    folder = make_tiny_bert(tmp_path / "e5-tiny")
    e5 = Encoder(ResolvedModel(name="intfloat/e5-tiny", path=folder, source="models_dir"))
    texts = ["the cat sat", "vector search"]
    for is_query, prompt in ((True, "query: "), (False, "passage: ")):
        result = one(e5, {"texts": texts, "is_query": is_query})
        np.testing.assert_allclose(vectors_of(result), e5.encode([prompt + t for t in texts]), **CLOSE)
        assert result["prompt_tokens"] == sum(e5.count_tokens([prompt + t for t in texts]))
    plain = Encoder(ResolvedModel(name="tiny-plain", path=folder, source="models_dir"))
    with_query = vectors_of(one(plain, {"texts": texts, "is_query": True}))
    np.testing.assert_allclose(with_query, vectors_of(one(plain, {"texts": texts})), **CLOSE)


def test_weight_is_the_number_of_inputs() -> None:
    assert weight_of("embed", {"texts": ["a", "b", "c"]}) == 3
    assert weight_of("embed", {"token_ids": [[1], [2]]}) == 2
    assert weight_of("tokenize", {"texts": ["a"]}) == 1
    assert weight_of("no-such-op", {"texts": ["a", "b"]}) == 1
    with pytest.raises(OpError, match="unknown inference op 'no-such-op'"):
        get_op("no-such-op")


@pytest.mark.parametrize("batching", ["true", "false"])
def test_handle_request_replies_with_the_result_or_the_error(batching: str, settings_env: SettingsEnv) -> None:
    settings_env.set(EMBEDQ_ENABLE_DYNAMIC_BATCHING=batching)
    reply = handle_request("embed", DEFAULT_MODEL, {"texts": ["a", "b"]})
    assert reply["batch"] == {"requests": 1, "inputs": 2} and reply["result"]["count"] == 2
    missing = handle_request("embed", "no-such-model", {"texts": ["a"]})
    assert missing["error"]["status"] == 404 and missing["error"]["code"] == "model_not_found"
    assert handle_request("nope", DEFAULT_MODEL, {})["error"]["code"] == "unknown_op"
    late = handle_request("embed", DEFAULT_MODEL, {"texts": ["a"]}, deadline=1.0)
    assert late["error"]["status"] == 504


@pytest.mark.parametrize("batching", ["true", "false"])
def test_every_request_runs_on_one_engine_thread_whoever_submits_it(batching: str, settings_env: SettingsEnv) -> None:
    """Model loads and forward passes share one thread (batcher.process_batcher says why), batching on or off."""
    settings_env.set(EMBEDQ_ENABLE_DYNAMIC_BATCHING=batching)
    warm = handle_request("warm_up", DEFAULT_MODEL, {})
    assert warm["result"] == {"model": DEFAULT_MODEL}

    def ask(_: int) -> tuple[int, dict[str, Any]]:
        return threading.get_ident(), handle_request("test_thread_of", DEFAULT_MODEL, {})

    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(ask, range(12)))
    engines = {reply["result"]["thread"] for _, reply in replies}
    callers = {caller for caller, _ in replies}
    assert len(engines) == 1 and not engines & callers, (engines, callers)
    assert engines != {threading.get_ident()}
