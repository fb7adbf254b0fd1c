"""Model families: detection from override, folder and name; prompts per ``is_query``; family pooling and length."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from support.tiny_models import make_tiny_bert

from app.catalog.families import (
    BGE_EN_QUERY_INSTRUCTION,
    BGE_ZH_QUERY_INSTRUCTION,
    M3_COLBERT_HEAD,
    M3_SPARSE_HEAD,
    UnknownFamilyError,
    detect_family,
)
from app.catalog.resolver import ResolvedModel
from workers.runtime.encoder import Encoder

TEXTS = ["hello world", "the cat sat on the mat", "machine learning data " * 40, ""]


def local(name: str, path: Path, family: str | None = None) -> ResolvedModel:
    return ResolvedModel(name=name, path=path, source="models_dir", family=family)


def write_prompts(folder: Path, prompts: dict[str, str], default: str | None = None) -> Path:
    config: dict[str, object] = {"prompts": prompts}
    if default is not None:
        config["default_prompt_name"] = default
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    return folder


# Detection.


@pytest.mark.parametrize(
    ("name", "family", "query", "document"),
    [
        ("intfloat/e5-base-v2", "e5", "query: ", "passage: "),
        ("intfloat/multilingual-e5-large", "e5", "query: ", "passage: "),
        ("BAAI/bge-small-en-v1.5", "bge", BGE_EN_QUERY_INSTRUCTION, None),
        ("BAAI/bge-large-zh-v1.5", "bge", BGE_ZH_QUERY_INSTRUCTION, None),
        ("BAAI/bge-m3", "bge-m3", None, None),
        ("thenlper/gte-base", "gte", None, None),
        ("damo/nlp_gte_sentence-embedding_chinese-base", "gte", None, None),
        ("my-model", "generic", None, None),
        ("bge-reranker-base", "generic", None, None),
        ("acme/e5x-thing", "generic", None, None),
    ],
)
def test_family_from_name(name: str, family: str, query: str | None, document: str | None) -> None:
    detected = detect_family(name)
    assert (detected.name, detected.query_prompt, detected.document_prompt) == (family, query, document)
    assert detected.reason


def test_family_rules() -> None:
    e5, bge, m3 = detect_family("e5-small"), detect_family("bge-base-en-v1.5"), detect_family("bge-m3")
    assert (e5.pooling, e5.max_seq_length) == ("mean", 512)
    assert (bge.pooling, bge.max_seq_length) == ("cls", 512)
    assert (m3.pooling, m3.max_seq_length, m3.hybrid) == ("cls", 8192, True)
    assert not e5.hybrid and not bge.hybrid


def test_override_wins_over_name_and_unknown_override_is_refused(tmp_path: Path) -> None:
    assert detect_family("intfloat/e5-base", override="BGE").name == "bge"
    assert detect_family("my-model", override="e5").reason == "set explicitly"
    with pytest.raises(UnknownFamilyError, match="use one of e5, bge, bge-m3"):
        detect_family("my-model", override="word2vec")


def test_folder_with_m3_heads_is_bge_m3_whatever_its_name(tmp_path: Path) -> None:
    (tmp_path / M3_SPARSE_HEAD).write_bytes(b"")
    (tmp_path / M3_COLBERT_HEAD).write_bytes(b"")
    assert detect_family("my-hybrid", tmp_path).name == "bge-m3"


def test_sentence_transformers_folder_prompts(tmp_path: Path) -> None:
    folder = make_tiny_bert(tmp_path / "st")
    assert detect_family("plain-st", folder).name == "sentence-transformers"
    write_prompts(folder, {"query": "Q> ", "passage": "P> ", "classification": "C> "}, default="classification")
    family = detect_family("plain-st", folder)
    assert (family.query_prompt, family.document_prompt, family.default_prompt) == ("Q> ", "P> ", "C> ")
    assert family.prompt_for(True) == "Q> " and family.prompt_for(False) == "P> " and family.prompt_for(None) == "C> "


def test_folder_prompts_replace_the_family_ones(tmp_path: Path) -> None:
    folder = write_prompts(make_tiny_bert(tmp_path / "e5"), {"query": "search_query: ", "document": ""})
    family = detect_family("intfloat/e5-small", folder)
    assert family.name == "e5"
    assert family.prompt_for(True) == "search_query: "
    assert family.prompt_for(False) is None, "an empty document prompt means no prompt"


# The encoder applies the family.


def test_e5_prefixes_follow_is_query(tmp_path: Path) -> None:
    encoder = Encoder(local("intfloat/e5-tiny", make_tiny_bert(tmp_path / "e5")))
    assert encoder.family.name == "e5"

    plain = encoder.encode(TEXTS)
    np.testing.assert_allclose(encoder.encode(TEXTS, is_query=True), encoder.encode([f"query: {t}" for t in TEXTS]))
    np.testing.assert_allclose(encoder.encode(TEXTS, is_query=False), encoder.encode([f"passage: {t}" for t in TEXTS]))
    assert not np.allclose(encoder.encode(TEXTS, is_query=True), plain, atol=1e-3)
    assert encoder.count_tokens(["hello"], is_query=True)[0] == encoder.count_tokens(["query: hello"])[0]


def test_bge_instruction_for_queries_only(tmp_path: Path) -> None:
    encoder = Encoder(local("BAAI/bge-small-en-v1.5", make_tiny_bert(tmp_path / "bge", pooling="cls")))
    queries = [BGE_EN_QUERY_INSTRUCTION + t for t in TEXTS]
    np.testing.assert_allclose(encoder.encode(TEXTS, is_query=True), encoder.encode(queries))
    np.testing.assert_allclose(encoder.encode(TEXTS, is_query=False), encoder.encode(TEXTS))


def test_prompts_match_sentence_transformers(tmp_path: Path) -> None:
    folder = write_prompts(make_tiny_bert(tmp_path / "st"), {"query": "find: ", "document": "doc: "})
    encoder = Encoder(local("prompted", folder))
    reference = SentenceTransformer(str(folder), device="cpu")

    for is_query, encode in ((True, reference.encode_query), (False, reference.encode_document)):
        ours = encoder.encode(TEXTS, is_query=is_query)
        np.testing.assert_allclose(ours, encode(TEXTS, convert_to_numpy=True), atol=1e-5)


def test_model_without_prompts_ignores_is_query(tmp_path: Path) -> None:
    encoder = Encoder(local("my-model", make_tiny_bert(tmp_path / "plain")))
    np.testing.assert_array_equal(encoder.encode(TEXTS, is_query=True), encoder.encode(TEXTS))
    np.testing.assert_array_equal(encoder.encode(TEXTS, is_query=False), encoder.encode(TEXTS))


def test_plain_folder_takes_its_family_pooling(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = make_tiny_bert(tmp_path / "plain", pooling=None)
    with caplog.at_level(logging.WARNING, logger="workers.runtime.pooling"):
        bge = Encoder(local("bge-base-en-v1.5", folder))
        e5 = Encoder(local("e5-base", folder))
    assert not caplog.records, "a known family's pooling needs no warning"
    assert (bge.pooling_mode, bge.normalize_default) == ("cls", True)
    assert (e5.pooling_mode, e5.normalize_default) == ("mean", True)

    hidden, mask = _hidden_states(bge, TEXTS)
    cls = torch.nn.functional.normalize(hidden[:, 0], dim=-1).numpy()
    mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    mean = torch.nn.functional.normalize(mean, dim=-1).numpy()
    np.testing.assert_allclose(bge.encode(TEXTS), cls, atol=1e-5)
    np.testing.assert_allclose(e5.encode(TEXTS), mean, atol=1e-5)


def test_explicit_family_override_changes_pooling_of_a_plain_folder(tmp_path: Path) -> None:
    folder = make_tiny_bert(tmp_path / "plain", pooling=None)
    assert Encoder(local("my-model", folder, family="bge")).pooling_mode == "cls"
    assert Encoder(local("my-model", folder)).pooling_mode == "mean"


def _hidden_states(encoder: Encoder, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference forward pass with transformers alone: one text at a time, no batching tricks."""
    rows, masks = [], []
    width = max(encoder.count_tokens(texts))
    for text in texts:
        inputs = encoder.tokenizer(text, truncation=True, max_length=encoder.max_seq_length, return_tensors="pt")
        with torch.no_grad():
            states = encoder.model(**inputs).last_hidden_state[0]
        pad = width - states.shape[0]
        rows.append(torch.nn.functional.pad(states, (0, 0, 0, pad)))
        masks.append(torch.nn.functional.pad(torch.ones(states.shape[0]), (0, pad)))
    return torch.stack(rows), torch.stack(masks)
