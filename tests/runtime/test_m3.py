"""BGE-M3 hybrid outputs and MaxSim rerank against a straightforward re-implementation of FlagEmbedding's formulas.

The model is a tiny random XLM-R with BGE-M3's heads (``support.tiny_m3``). The reference runs one text at a
time through transformers and the heads, with plain Python loops: no batching, padding or sorting.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from support.settings import SettingsEnv
from support.tiny_m3 import make_tiny_m3
from support.tiny_models import make_tiny_bert

from app.catalog.resolver import ResolvedModel
from workers.inference.hybrid_ops import hybrid, rerank
from workers.inference.ops import OpError
from workers.runtime.capabilities import load_encoder
from workers.runtime.encoder import Encoder
from workers.runtime.m3 import NotHybridModelError, encode_hybrid, maxsim, rerank_maxsim

TOL = 1e-5
TEXTS = [
    "the cat and the dog and the cat",
    "hybrid search with sparse and dense vectors",
    "a",
    "machine learning data " * 30,
    "colbert late interaction score",
]


@pytest.fixture(scope="module")
def m3_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_m3(tmp_path_factory.mktemp("m3") / "tiny-m3")


@pytest.fixture(scope="module")
def m3(m3_folder: Path) -> Encoder:
    return load_encoder(ResolvedModel(name="my-m3", path=m3_folder, source="models_dir"))


class Reference:
    """FlagEmbedding's BGEM3 formulas, one text at a time, written out with loops."""

    def __init__(self, folder: Path, encoder: Encoder) -> None:
        from transformers import AutoModel

        self.tokenizer = encoder.tokenizer
        self.model = AutoModel.from_pretrained(folder).eval()
        self.sparse = torch.load(folder / "sparse_linear.pt", weights_only=True)
        self.colbert = torch.load(folder / "colbert_linear.pt", weights_only=True)
        self.max_length = encoder.max_seq_length
        special = ("cls_token", "eos_token", "pad_token", "unk_token")
        self.unused = {self.tokenizer.convert_tokens_to_ids(getattr(self.tokenizer, name)) for name in special}

    def states(self, text: str) -> tuple[list[int], torch.Tensor]:
        inputs = self.tokenizer(text, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.no_grad():
            hidden = self.model(**inputs).last_hidden_state[0]
        return inputs["input_ids"][0].tolist(), hidden

    def dense(self, text: str) -> list[float]:
        _, hidden = self.states(text)
        cls = hidden[0].tolist()
        norm = math.sqrt(sum(x * x for x in cls))
        return [x / norm for x in cls]

    def sparse_weights(self, text: str) -> dict[int, float]:
        ids, hidden = self.states(text)
        weight, bias = self.sparse["weight"][0].tolist(), self.sparse["bias"][0].item()
        result: dict[int, float] = {}
        for token_id, state in zip(ids, hidden.tolist(), strict=True):
            score = max(0.0, sum(w * h for w, h in zip(weight, state, strict=True)) + bias)
            if token_id in self.unused or score <= 0:
                continue
            result[token_id] = max(result.get(token_id, 0.0), score)
        return result

    def colbert_vectors(self, text: str) -> list[list[float]]:
        _, hidden = self.states(text)
        weight, bias = self.colbert["weight"].tolist(), self.colbert["bias"].tolist()
        vectors = []
        for state in hidden.tolist()[1:]:
            vector = [
                sum(w * h for w, h in zip(row, state, strict=True)) + b for row, b in zip(weight, bias, strict=True)
            ]
            norm = math.sqrt(sum(x * x for x in vector))
            vectors.append([x / norm for x in vector])
        return vectors

    def maxsim(self, query: str, candidate: str) -> float:
        q_vectors, c_vectors = self.colbert_vectors(query), self.colbert_vectors(candidate)
        best = [max(sum(a * b for a, b in zip(q, c, strict=True)) for c in c_vectors) for q in q_vectors]
        return sum(best) / len(best)


@pytest.fixture(scope="module")
def reference(m3_folder: Path, m3: Encoder) -> Reference:
    return Reference(m3_folder, m3)


def test_m3_folder_is_detected_with_its_heads(m3: Encoder) -> None:
    assert m3.family.name == "bge-m3"
    assert m3.m3_heads is not None
    assert (m3.pooling_mode, m3.normalize_default, m3.dimension) == ("cls", True, 32)
    assert m3.max_seq_length == 128


def test_dense_is_the_normalized_cls_state(m3: Encoder, reference: Reference) -> None:
    output = encode_hybrid(m3, TEXTS, batch_size=2)
    for row, text in enumerate(TEXTS):
        np.testing.assert_allclose(output.dense[row], reference.dense(text), atol=TOL)
    np.testing.assert_allclose(m3.encode(TEXTS), output.dense, atol=TOL)


def test_sparse_weights_match_the_reference(m3: Encoder, reference: Reference) -> None:
    output = encode_hybrid(m3, TEXTS, batch_size=2)
    kept = dropped = 0
    for row, text in enumerate(TEXTS):
        expected = reference.sparse_weights(text)
        assert set(output.sparse[row]) == set(expected), text
        for token_id, weight in expected.items():
            assert output.sparse[row][token_id] == pytest.approx(weight, abs=TOL)
        kept += len(expected)
        dropped += len(set(reference.states(text)[0]) - set(expected) - reference.unused)
    assert kept > 0 and dropped > 0, "the tiny head must keep some tokens and ReLU away others"
    repeated = reference.tokenizer("the cat and the dog and the cat")["input_ids"]
    assert len(set(repeated)) < len(repeated), "a repeated token id is exercised (max per id)"


def test_no_special_token_in_sparse_output(m3: Encoder, reference: Reference) -> None:
    output = encode_hybrid(m3, TEXTS)
    assert all(not (set(weights) & reference.unused) for weights in output.sparse)


def test_colbert_vectors_match_the_reference(m3: Encoder, reference: Reference) -> None:
    output = encode_hybrid(m3, TEXTS, return_colbert=True, batch_size=3)
    assert output.colbert is not None
    for row, text in enumerate(TEXTS):
        expected = np.array(reference.colbert_vectors(text))
        assert output.colbert[row].shape == expected.shape, "tokens after CLS, padding dropped"
        np.testing.assert_allclose(output.colbert[row], expected, atol=TOL)
    assert encode_hybrid(m3, TEXTS).colbert is None


def test_maxsim_rerank_matches_the_reference(m3: Encoder, reference: Reference) -> None:
    query = "sparse dense search"
    scores = rerank_maxsim(m3, query, TEXTS, batch_size=2)
    expected = [reference.maxsim(query, text) for text in TEXTS]
    np.testing.assert_allclose(scores, expected, atol=TOL)
    assert len(set(np.round(scores, 4))) == len(TEXTS), "distinct candidates get distinct scores"


def test_maxsim_of_small_matrices() -> None:
    query = np.array([[1.0, 0.0], [0.0, 1.0]])
    candidate = np.array([[0.5, 0.5], [1.0, 0.0], [0.0, 0.2]])
    assert maxsim(query, candidate) == pytest.approx((1.0 + 0.5) / 2)
    assert maxsim(query, candidate[:0]) == 0.0


def test_hybrid_op_batches_payloads_and_keeps_their_order(m3: Encoder, reference: Reference) -> None:
    payloads = [
        {"texts": TEXTS[:2], "return_colbert": True},
        {"texts": "not a list"},
        {"texts": TEXTS[2:]},
    ]
    first, bad, last = hybrid(m3, payloads)

    assert isinstance(bad, OpError) and bad.param == "texts"
    assert isinstance(first, dict) and isinstance(last, dict)
    assert [len(first["data"]), len(last["data"])] == [2, 3]
    np.testing.assert_allclose(first["data"][1]["dense"], reference.dense(TEXTS[1]), atol=TOL)
    assert len(first["data"][0]["colbert"]) == len(reference.colbert_vectors(TEXTS[0]))
    assert "colbert" not in last["data"][0]
    sparse = first["data"][0]["sparse"]
    expected = reference.sparse_weights(TEXTS[0])
    assert sparse == pytest.approx({str(k): v for k, v in expected.items()}, abs=TOL)
    tokens = reference.tokenizer.convert_ids_to_tokens([int(k) for k in sparse])
    assert set(first["data"][0]["sparse_tokens"]) == set(tokens)


def test_rerank_op(m3: Encoder, reference: Reference) -> None:
    (result, bad) = rerank(m3, [{"query": "cat", "candidates": TEXTS, "batch_size": 2}, {"candidates": ["x"]}])
    assert isinstance(result, dict)
    np.testing.assert_allclose(result["scores"], [reference.maxsim("cat", t) for t in TEXTS], atol=TOL)
    assert isinstance(bad, OpError) and bad.param == "query"


def test_non_m3_model_is_refused_with_the_reason(tmp_path: Path) -> None:
    bert = Encoder(ResolvedModel(name="tiny-bert", path=make_tiny_bert(tmp_path / "bert"), source="models_dir"))
    with pytest.raises(NotHybridModelError, match="need a BGE-M3 model"):
        encode_hybrid(bert, ["x"])
    (result,) = hybrid(bert, [{"texts": ["x"]}])
    assert isinstance(result, OpError) and (result.status, result.code) == (400, "model_not_hybrid")
    (result,) = rerank(bert, [{"query": "q", "candidates": ["x"]}])
    assert isinstance(result, OpError) and result.status == 400


def test_m3_named_folder_without_heads_serves_dense_only(tmp_path: Path) -> None:
    folder = make_tiny_m3(tmp_path / "m3")
    (folder / "sparse_linear.pt").unlink()
    encoder = load_encoder(ResolvedModel(name="BAAI/bge-m3", path=folder, source="models_dir"))
    assert encoder.family.name == "bge-m3" and encoder.m3_heads is None
    assert encoder.encode(["hello"]).shape == (1, 32)
    with pytest.raises(NotHybridModelError):
        encode_hybrid(encoder, ["hello"])


def test_hybrid_on_the_onnx_backend_matches_torch(
    m3_folder: Path, m3: Encoder, tmp_path: Path, settings_env: SettingsEnv
) -> None:
    settings_env.set(EMBEDQ_ONNX_DIR=str(tmp_path / "onnx"))
    onnx = load_encoder(
        ResolvedModel(name="my-m3", path=m3_folder, source="models_dir", precision="fp32", backend="onnx")
    )
    ours, theirs = encode_hybrid(onnx, TEXTS, return_colbert=True), encode_hybrid(m3, TEXTS, return_colbert=True)
    np.testing.assert_allclose(ours.dense, theirs.dense, atol=1e-4)
    assert ours.colbert is not None and theirs.colbert is not None
    for a, b in zip(ours.colbert, theirs.colbert, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    for a, b in zip(ours.sparse, theirs.sparse, strict=True):
        assert set(a) == set(b)
