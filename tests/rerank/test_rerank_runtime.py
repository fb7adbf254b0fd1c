"""Cross-encoders in the worker: scores equal sentence-transformers' CrossEncoder.predict on the same pairs, in
length-sorted passes of several sizes; the score_pairs op pools requests and rejects one alone; rerankers and
embedders refuse each other's ops; the catalog tells them apart by their folders (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support.settings import SettingsEnv
from support.tiny_m3 import make_tiny_m3
from support.tiny_models import make_tiny_bert
from support.tiny_rerankers import make_tiny_reranker

from app.catalog.families import detect_family
from app.catalog.resolver import ResolvedModel
from app.catalog.tasks import is_cross_encoder, model_tasks
from app.rerank.service import ranking, search_units
from workers.inference.embed_ops import embed
from workers.inference.ops import OpError
from workers.inference.rerank_ops import score_pairs
from workers.runtime.capabilities import load_encoder
from workers.runtime.cross_encoder import CrossEncoderModel, NotAnEmbeddingModelError
from workers.runtime.encoder import Encoder
from workers.runtime.pooling import UnsupportedModelError

TOL = 1e-5
QUERY = "where is the cat"
TEXTS = [
    "the cat is in the house",
    "a",
    "river mountain city " * 20,
    "the dog and the cat and the blue house by the river",
    "music",
    "machine learning data " * 60,
]


@pytest.fixture(scope="module", params=["bert", "xlm-roberta"])
def reranker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> CrossEncoderModel:
    folder = make_tiny_reranker(tmp_path_factory.mktemp("ce") / request.param, request.param, seed=1)
    # A small token budget: the pairs run in several passes of different widths.
    encoder = load_encoder(
        ResolvedModel(name=f"acme/{request.param}", path=folder, source="models_dir"), batch_tokens=96
    )
    assert isinstance(encoder, CrossEncoderModel)
    return encoder


def predict(
    folder: Path, pairs: list[tuple[str, str]], *, raw: bool = False, max_length: int | None = None
) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), max_length=max_length)
    return model.predict(pairs, activation_fn=torch.nn.Identity() if raw else None, batch_size=64)


def test_logits_equal_cross_encoder_predict(reranker: CrossEncoderModel) -> None:
    pairs = [(QUERY, text) for text in TEXTS]

    scored = reranker.score_pairs(pairs, batch_size=2)

    assert np.abs(scored.logits - predict(reranker.path, pairs, raw=True)).max() <= TOL
    assert max(scored.token_counts) == reranker.max_seq_length  # the longest pair was cut to the model's limit
    cut = reranker.score_pairs(pairs, max_tokens=24)
    assert np.abs(cut.logits - predict(reranker.path, pairs, raw=True, max_length=24)).max() <= TOL
    assert max(cut.token_counts) == 24


def test_score_pairs_op_pools_requests_and_answers_each(reranker: CrossEncoderModel) -> None:
    pairs = [(QUERY, text) for text in TEXTS]
    sigmoid, raw = predict(reranker.path, pairs), predict(reranker.path, pairs, raw=True)
    payloads = [
        {"query": QUERY, "texts": TEXTS},
        {"query": QUERY, "texts": TEXTS[:2], "raw_scores": True},
        {"query": QUERY, "texts": TEXTS, "truncate": False, "max_tokens": 24},
        {"query": QUERY, "texts": TEXTS[:2], "truncate": False, "max_tokens": 24},
        {"query": 3, "texts": ["x"]},
    ]

    first, second, too_long, short, malformed = score_pairs(reranker, payloads)

    assert isinstance(first, dict) and isinstance(second, dict) and isinstance(short, dict)
    assert np.abs(np.array(first["scores"]) - sigmoid).max() <= TOL
    assert np.abs(np.array(second["scores"]) - raw[:2]).max() <= TOL
    assert np.abs(np.array(short["scores"]) - sigmoid[:2]).max() <= TOL
    assert first["prompt_tokens"] == sum(reranker.score_pairs(pairs).token_counts)
    assert isinstance(too_long, OpError) and too_long.code == "input_too_long" and "texts[2]" in too_long.message
    assert isinstance(malformed, OpError) and malformed.param == "query"


def test_a_reranker_gives_no_vectors_and_an_embedder_scores_no_pairs(
    reranker: CrossEncoderModel, tmp_path: Path
) -> None:
    (refused,) = embed(reranker, [{"texts": ["a cat"]}])
    assert isinstance(refused, OpError) and refused.code == "model_not_embedding" and "/rerank" in refused.message
    with pytest.raises(NotAnEmbeddingModelError, match="reranker"):
        reranker.encode(["a cat"])
    embedder = load_encoder(ResolvedModel(name="acme/bert", path=make_tiny_bert(tmp_path / "b"), source="models_dir"))
    assert type(embedder) is Encoder
    (not_reranker,) = score_pairs(embedder, [{"query": "q", "texts": ["a"]}])
    assert isinstance(not_reranker, OpError) and not_reranker.code == "model_not_reranker"


def test_int8_loads_and_onnx_is_refused(tmp_path: Path) -> None:
    folder = make_tiny_reranker(tmp_path / "ce")
    model = ResolvedModel(name="acme/ce", path=folder, source="models_dir", precision="int8")
    int8 = load_encoder(model)
    assert isinstance(int8, CrossEncoderModel)
    exact = predict(folder, [(QUERY, t) for t in TEXTS[:3]], raw=True)
    assert np.abs(int8.score_pairs([(QUERY, t) for t in TEXTS[:3]]).logits - exact).max() < 0.1
    with pytest.raises(UnsupportedModelError, match="torch backend"):
        load_encoder(ResolvedModel(name="acme/ce", path=folder, source="models_dir", backend="onnx"))


def test_a_saved_sentence_transformers_cross_encoder_loads_and_matches(tmp_path: Path) -> None:
    from sentence_transformers import CrossEncoder

    CrossEncoder(str(make_tiny_reranker(tmp_path / "plain", seed=4))).save_pretrained(str(tmp_path / "saved"))
    folder = tmp_path / "saved"
    assert json.loads((folder / "config_sentence_transformers.json").read_text())["model_type"] == "CrossEncoder"
    encoder = load_encoder(ResolvedModel(name="acme/saved", path=folder, source="models_dir"))
    pairs = [(QUERY, text) for text in TEXTS[:4]]
    assert np.abs(encoder.score_pairs(pairs).logits - predict(folder, pairs, raw=True)).max() <= TOL  # type: ignore[attr-defined]


def test_the_catalog_tells_rerankers_by_their_folders(tmp_path: Path, settings_env: SettingsEnv) -> None:
    bert_ce, xlmr_ce = make_tiny_reranker(tmp_path / "a"), make_tiny_reranker(tmp_path / "b", "xlm-roberta")
    m3, embedder = make_tiny_m3(tmp_path / "m3"), make_tiny_bert(tmp_path / "bert")
    three_labels = make_tiny_reranker(tmp_path / "nli")
    config = json.loads((three_labels / "config.json").read_text())
    config["id2label"] = {"0": "contradiction", "1": "entailment", "2": "neutral"}
    (three_labels / "config.json").write_text(json.dumps(config))

    def tasks(name: str, folder: Path | None) -> list[str]:
        return list(model_tasks(name, folder, detect_family(name, folder)))

    assert tasks("a", bert_ce) == tasks("b", xlmr_ce) == ["rerank"]
    assert tasks("BAAI/bge-m3", m3) == ["embed", "rerank"]
    assert tasks("e", embedder) == tasks("nli", three_labels) == ["embed"]
    # Not downloaded yet: the hub name decides.
    assert is_cross_encoder("cross-encoder/ms-marco-MiniLM-L-6-v2", None)
    assert is_cross_encoder("BAAI/bge-reranker-base", None)
    assert not is_cross_encoder("BAAI/bge-small-en-v1.5", None)


def test_ranking_and_search_units() -> None:
    assert ranking([0.1, 0.9, 0.5, 0.9]) == [1, 3, 2, 0]
    assert ranking([0.1, 0.9, 0.5], top_n=2) == [1, 2]
    assert [search_units(n) for n in (1, 100, 101, 1000)] == [1, 1, 2, 10]


def test_auto_precision_with_measuring_on_loads_a_reranker_unmeasured(
    tmp_path: Path, settings_env: SettingsEnv
) -> None:
    # `auto` measures by embedding calibration texts; a reranker embeds nothing, so it keeps the default.
    settings_env.set(EMBEDQ_PRECISION_AUTO_MEASURE="true", EMBEDQ_PRECISION_CACHE_DIR=str(tmp_path / "cache"))
    folder = make_tiny_reranker(tmp_path / "ce")
    encoder = load_encoder(ResolvedModel(name="acme/ce", path=folder, source="models_dir"))
    assert isinstance(encoder, CrossEncoderModel) and encoder.precision == "fp32"
    exact = predict(folder, [(QUERY, t) for t in TEXTS[:3]], raw=True)
    assert np.abs(encoder.score_pairs([(QUERY, t) for t in TEXTS[:3]]).logits - exact).max() <= 1e-5
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
