"""Packed passes (workers/runtime/packed.py) give the padded passes' outputs, for BERT and XLM-R, heads included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from support.settings import SettingsEnv
from support.texts import mixed_texts
from support.tiny_m3 import make_tiny_m3
from support.tiny_models import make_tiny_bert
from support.tiny_rerankers import make_tiny_reranker
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

from app.catalog.resolver import ResolvedModel
from workers.runtime.batching import packed_passes
from workers.runtime.capabilities import load_encoder
from workers.runtime.encoder import Encoder
from workers.runtime.m3 import encode_hybrid
from workers.runtime.packed import forward_packed, supports_packed


def local(name: str, path: Path, precision: str = "fp32") -> ResolvedModel:
    return ResolvedModel(name=name, path=path, source="models_dir", precision=precision)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    # Short and long (truncated) texts, an empty one, in no length order.
    return [*mixed_texts(80, seed=3), "", "a", "machine learning data " * 40]


def both_ways(settings_env: SettingsEnv, model: ResolvedModel, texts: list[str]) -> tuple[Encoder, Encoder]:
    settings_env.set(EMBEDQ_PACKED_PASSES="false")
    padded = load_encoder(model)
    assert padded.packed_size() is None
    settings_env.set(EMBEDQ_PACKED_PASSES="true", EMBEDQ_ATTENTION_GROUP_ROWS="3", EMBEDQ_PACKED_PASS_TOKENS="200")
    packed = load_encoder(model)
    assert packed.packed_size() is not None
    return padded, packed


@pytest.mark.parametrize("family", ["bert", "xlm-r"])
def test_packed_vectors_match_padded_passes(
    tmp_path: Path, settings_env: SettingsEnv, texts: list[str], family: str
) -> None:
    folder = make_tiny_bert(tmp_path / "m") if family == "bert" else make_tiny_m3(tmp_path / "m")
    padded, packed = both_ways(settings_env, local(family, folder), texts)
    expected = padded.encode(texts)
    # Many passes of several groups each: the settings above cut these texts into both.
    tokens = packed.tokenize(texts)
    passes = packed_passes([len(ids) for ids in tokens["input_ids"]], 3, 256, 200)
    assert len(passes) > 3 and any(len(groups) > 1 for groups in passes)
    got = packed.encode(texts)
    np.testing.assert_allclose(got, expected, atol=2e-5)
    # Input order is kept: each row is its own text's vector.
    assert np.allclose(packed.encode(texts[::-1]), expected[::-1], atol=2e-5)


def test_packed_hidden_states_match_the_model_at_every_real_token(tmp_path: Path, texts: list[str]) -> None:
    folder = make_tiny_m3(tmp_path / "m")
    model = AutoModel.from_pretrained(folder).eval()
    encoder_texts = texts[:12]
    encoded = AutoTokenizer.from_pretrained(folder)(encoder_texts, truncation=True, max_length=60)
    tokens = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    groups = [[0, 5, 7], [1], [2, 3, 4, 6, 8, 9, 10, 11]]
    states = forward_packed(model, tokens, groups, torch.device("cpu"))
    for group, hidden in zip(groups, states, strict=True):
        for i, row in enumerate(group):
            ids = torch.tensor([tokens["input_ids"][row]])
            with torch.inference_mode():
                alone = model(input_ids=ids).last_hidden_state[0]
            n = len(tokens["input_ids"][row])
            torch.testing.assert_close(hidden[i, :n], alone, atol=1e-5, rtol=1e-4)
            assert torch.count_nonzero(hidden[i, n:]) == 0, "pad positions are zero"


def test_m3_heads_read_packed_states_as_padded_ones(tmp_path: Path, settings_env: SettingsEnv) -> None:
    folder = make_tiny_m3(tmp_path / "m3")
    texts = ["search queue job", "the red cat and the dog " * 6, "a", "machine learning data fast"]
    padded, packed = both_ways(settings_env, local("m3", folder), texts)
    expected = encode_hybrid(padded, texts, return_colbert=True)
    got = encode_hybrid(packed, texts, return_colbert=True)
    np.testing.assert_allclose(got.dense, expected.dense, atol=2e-5)
    for mine, theirs in zip(got.sparse, expected.sparse, strict=True):
        assert mine.keys() == theirs.keys()
        assert all(abs(mine[k] - theirs[k]) < 1e-4 for k in mine)
    assert got.colbert is not None and expected.colbert is not None
    for mine, theirs in zip(got.colbert, expected.colbert, strict=True):
        np.testing.assert_allclose(mine, theirs, atol=2e-5)


def test_bf16_packed_vectors_stay_within_bf16_noise(
    tmp_path: Path, settings_env: SettingsEnv, texts: list[str]
) -> None:
    folder = make_tiny_bert(tmp_path / "m")
    padded, packed = both_ways(settings_env, local("bert", folder, "bf16"), texts)
    cosine = (padded.encode(texts) * packed.encode(texts)).sum(axis=1)
    assert cosine.min() >= 0.999


def test_only_self_attention_encoders_run_packed(tmp_path: Path) -> None:
    bert = AutoModel.from_pretrained(make_tiny_bert(tmp_path / "b"))
    assert supports_packed(bert)
    assert supports_packed(AutoModel.from_pretrained(make_tiny_m3(tmp_path / "x")))
    reranker = make_tiny_reranker(tmp_path / "r")
    assert not supports_packed(AutoModelForSequenceClassification.from_pretrained(reranker))
    decoder = BertConfig(**{**bert.config.to_dict(), "is_decoder": True})
    assert not supports_packed(BertModel(decoder))


def test_packed_passes_partition_inputs_longest_first_within_both_budgets() -> None:
    lengths = [5, 40, 12, 12, 3, 90, 7, 7, 7, 1]
    passes = packed_passes(lengths, 3, 40, 60)
    groups = [group for groups in passes for group in groups]
    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    order = [lengths[i] for group in groups for i in group]
    assert order == sorted(lengths, reverse=True)
    for group in groups:
        assert len(group) <= 3
        assert len(group) == 1 or len(group) * lengths[group[0]] <= 40
    for groups in passes:
        real = sum(lengths[i] for group in groups for i in group)
        assert real <= 60 or len(groups) == 1, "only a lone group may exceed the pass budget"
    assert passes[0] == [[5]], "the 90-token input is a pass of its own"
