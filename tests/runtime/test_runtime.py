"""The model runtime against sentence-transformers: parity, order, pooling, truncation, devices, the LRU.

Offline by construction: tests/conftest.py sets HF_HUB_OFFLINE=1 before collection, and every model here
is a local folder (the packaged MiniLM or a tiny BERT written by ``support.tiny_models``).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from support.settings import SettingsEnv
from support.texts import mixed_texts
from support.tiny_models import make_tiny_bert

from app.catalog.resolver import ResolvedModel, resolve_model
from app.core.config import DEFAULT_MODEL, Settings, get_settings
from app.training import storage
from workers.runtime import registry
from workers.runtime.device import DeviceUnavailableError, pick_device
from workers.runtime.encoder import Encoder
from workers.runtime.pooling import (
    PoolingConfig,
    UnsupportedModelError,
    cls_pool,
    last_token_pool,
    mean_pool,
    read_pooling_config,
)

PARITY = 0.9999
TINY_TEXTS = ["hello world", "the cat sat on the mat", "a", "machine learning data " * 30, "", "Dog, river; 42!"]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def local(name: str, path: Path) -> ResolvedModel:
    return ResolvedModel(name=name, path=path, source="models_dir")


@pytest.fixture(scope="module")
def minilm() -> Encoder:
    resolved = resolve_model(DEFAULT_MODEL, Settings(models_dir=Path("/nonexistent")))
    assert resolved.source == "package"
    return Encoder(resolved)


@pytest.fixture(scope="module")
def parity_texts() -> list[str]:
    return mixed_texts(300, seed=0)


# MiniLM: the real model against sentence-transformers.


def test_minilm_matches_sentence_transformers(minilm: Encoder, parity_texts: list[str]) -> None:
    lengths = minilm.count_tokens(parity_texts, truncate=False)
    assert sum(n > minilm.max_seq_length for n in lengths) >= 10, "truncation must be exercised"
    assert min(lengths) <= 5

    ours = minilm.encode(parity_texts)
    reference = SentenceTransformer(str(minilm.path), device="cpu").encode(
        parity_texts, normalize_embeddings=True, convert_to_numpy=True
    )

    assert ours.shape == (len(parity_texts), 384) and ours.dtype == np.float32
    similarity = cosines(ours, reference)
    print(f"MiniLM parity over {len(parity_texts)} texts: mean {similarity.mean():.7f}, min {similarity.min():.7f}")
    assert similarity.mean() >= PARITY
    assert similarity.min() >= PARITY


def test_minilm_metadata(minilm: Encoder) -> None:
    assert minilm.name == DEFAULT_MODEL
    assert minilm.dimension == 384
    assert minilm.max_seq_length == 256  # sentence_bert_config.json, not the tokenizer's 512
    assert minilm.normalize_default is True
    assert minilm.device == torch.device("cpu")
    assert minilm.load_seconds > 0


def test_output_rows_follow_input_order(minilm: Encoder, parity_texts: list[str]) -> None:
    texts = parity_texts[:60]
    permutation = list(range(len(texts)))
    random.Random(7).shuffle(permutation)

    in_order = minilm.encode(texts, batch_size=16)
    shuffled = minilm.encode([texts[i] for i in permutation], batch_size=16)

    np.testing.assert_allclose(shuffled, in_order[permutation], atol=1e-5)
    assert cosines(in_order[:1], in_order[1:2])[0] < 0.99, "distinct texts must give distinct rows"


def test_batch_size_does_not_change_results(minilm: Encoder, parity_texts: list[str]) -> None:
    texts = parity_texts[:24]
    np.testing.assert_allclose(minilm.encode(texts, batch_size=1), minilm.encode(texts, batch_size=64), atol=1e-5)


def test_inputs_are_truncated_to_max_seq_length(minilm: Encoder) -> None:
    long_text = "The quick brown fox jumps over the lazy dog. " * 60
    assert minilm.count_tokens([long_text], truncate=False)[0] > 2 * minilm.max_seq_length
    assert minilm.count_tokens([long_text]) == [minilm.max_seq_length]

    same_prefix = minilm.encode([long_text, long_text + " Completely different ending about tax law."])
    np.testing.assert_allclose(same_prefix[0], same_prefix[1], atol=1e-6)


def test_normalize_flag_overrides_the_model_default(minilm: Encoder) -> None:
    texts = ["embedding models", "a job queue"]
    raw = minilm.encode(texts, normalize=False)
    unit = minilm.encode(texts)

    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-5)


def test_empty_input_and_bad_arguments(minilm: Encoder) -> None:
    assert minilm.encode([]).shape == (0, 384)
    assert minilm.count_tokens([]) == []
    with pytest.raises(TypeError, match="item 1 is int"):
        minilm.encode(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size"):
        minilm.encode(["x"], batch_size=0)


# Tiny random BERTs: pooling and normalization read from the folder.


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_tiny_bert_pooling_matches_sentence_transformers(pooling: str, tmp_path: Path) -> None:
    folder = make_tiny_bert(tmp_path / pooling, pooling=pooling)
    encoder = Encoder(local(f"tiny-{pooling}", folder))

    ours = encoder.encode(TINY_TEXTS)
    reference = SentenceTransformer(str(folder), device="cpu").encode(TINY_TEXTS, convert_to_numpy=True)

    assert encoder.pooling_mode == pooling and encoder.normalize_default is True
    assert cosines(ours, reference).min() >= PARITY
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_tiny_bert_pooling_modes_are_distinguishable(tmp_path: Path) -> None:
    # Same seed, same weights: only the pooling differs, so a runtime that ignored the config would fail here.
    cls_encoder = Encoder(local("cls", make_tiny_bert(tmp_path / "cls", pooling="cls")))
    mean_encoder = Encoder(local("mean", make_tiny_bert(tmp_path / "mean", pooling="mean")))
    assert cosines(cls_encoder.encode(TINY_TEXTS), mean_encoder.encode(TINY_TEXTS)).min() < 0.99


def test_tiny_bert_without_normalize_module(tmp_path: Path) -> None:
    folder = make_tiny_bert(tmp_path / "raw", pooling="mean", normalize=False)
    encoder = Encoder(local("raw", folder))

    ours = encoder.encode(TINY_TEXTS)
    reference = SentenceTransformer(str(folder), device="cpu").encode(TINY_TEXTS, convert_to_numpy=True)

    assert encoder.normalize_default is False
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert not np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(encoder.encode(TINY_TEXTS, normalize=True), axis=1), 1.0, atol=1e-5)


def test_folder_saved_by_sentence_transformers_6(tmp_path: Path) -> None:
    legacy = make_tiny_bert(tmp_path / "legacy", pooling="cls", max_seq_length=16)
    model = SentenceTransformer(str(legacy), device="cpu")
    model.save(str(tmp_path / "saved"))

    config = json.loads((tmp_path / "saved" / "1_Pooling" / "config.json").read_text())
    assert config["pooling_mode"] == "cls", "sentence-transformers 6 writes the new single-key format"
    encoder = Encoder(local("saved", tmp_path / "saved"))

    assert (encoder.pooling_mode, encoder.normalize_default, encoder.max_seq_length) == ("cls", True, 16)
    reference = model.encode(TINY_TEXTS, convert_to_numpy=True)
    assert cosines(encoder.encode(TINY_TEXTS), reference).min() >= PARITY


def test_folder_without_pooling_config_uses_mean_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = make_tiny_bert(tmp_path / "plain", pooling=None)
    with caplog.at_level(logging.WARNING, logger="workers.runtime.pooling"):
        encoder = Encoder(local("plain", folder))

    assert any("mean pooling" in record.getMessage() for record in caplog.records)
    assert (encoder.pooling_mode, encoder.normalize_default) == ("mean", False)
    assert encoder.max_seq_length == 128  # no sentence_bert_config.json: capped at max_position_embeddings
    reference = SentenceTransformer(str(folder), device="cpu").encode(TINY_TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(encoder.encode(TINY_TEXTS), reference, atol=1e-5)


def test_encode_from_several_threads(tmp_path: Path) -> None:
    encoder = Encoder(local("tiny", make_tiny_bert(tmp_path / "tiny")))
    expected = encoder.encode(TINY_TEXTS)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: encoder.encode(TINY_TEXTS), range(8)))
    for result in results:
        np.testing.assert_allclose(result, expected, atol=1e-6)


def test_hub_model_is_downloaded_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    folder = make_tiny_bert(tmp_path / "snapshot")
    requested: list[str] = []

    def fake_snapshot_download(repo_id: str, **kwargs: object) -> str:
        requested.append(repo_id)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    encoder = Encoder(ResolvedModel(name="acme/tiny", path=None, source="hub"))

    assert requested == ["acme/tiny"]
    assert encoder.path == folder and encoder.dimension == 32


# Pooling config and pure pooling functions.


def write_modules(folder: Path, modules: list[tuple[str, str]], pooling: dict[str, object] | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    entries = [{"idx": i, "name": str(i), "path": path, "type": kind} for i, (path, kind) in enumerate(modules)]
    (folder / "modules.json").write_text(json.dumps(entries))
    if pooling is not None:
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


TRANSFORMER = ("", "sentence_transformers.models.Transformer")
POOLING = ("1_Pooling", "sentence_transformers.sentence_transformer.modules.pooling.Pooling")
NORMALIZE = ("2_Normalize", "sentence_transformers.base.modules.normalize.Normalize")


@pytest.mark.parametrize(
    ("pooling", "expected"),
    [
        ({"pooling_mode": "lasttoken", "embedding_dimension": 8}, "lasttoken"),
        ({"pooling_mode": ["cls"]}, "cls"),
        ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}, "mean"),
        ({"pooling_mode_lasttoken": True}, "lasttoken"),
        ({"word_embedding_dimension": 8}, "mean"),
    ],
)
def test_read_pooling_config_formats(pooling: dict[str, object], expected: str, tmp_path: Path) -> None:
    folder = write_modules(tmp_path / "m", [TRANSFORMER, POOLING, NORMALIZE], pooling)
    assert read_pooling_config(folder) == PoolingConfig(mode=expected, normalize=True)


@pytest.mark.parametrize(
    ("modules", "pooling", "match"),
    [
        ([TRANSFORMER, POOLING, ("2_Dense", "sentence_transformers.models.Dense")], {"pooling_mode": "mean"}, "Dense"),
        ([TRANSFORMER, POOLING], {"pooling_mode": ["cls", "mean"]}, "exactly one"),
        ([TRANSFORMER, POOLING], {"pooling_mode_max_tokens": True}, "max"),
    ],
)
def test_read_pooling_config_refuses_what_it_cannot_reproduce(
    modules: list[tuple[str, str]], pooling: dict[str, object], match: str, tmp_path: Path
) -> None:
    with pytest.raises(UnsupportedModelError, match=match):
        read_pooling_config(write_modules(tmp_path / "m", modules, pooling))


@pytest.fixture
def padded() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows of 3 real tokens, one padded on the right, one on the left, with token i's state = i+1."""
    hidden = torch.tensor([[1.0, 2.0, 3.0, 0.0], [0.0, 1.0, 2.0, 3.0]]).unsqueeze(-1).repeat(1, 1, 2)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]])
    return hidden, right, left


def test_pooling_functions_handle_both_padding_sides(padded: tuple[torch.Tensor, ...]) -> None:
    hidden, right, left = padded
    right_hidden, left_hidden = hidden[:1], hidden[1:]
    for states, mask in ((right_hidden, right[:1]), (left_hidden, left[:1])):
        assert mean_pool(states, mask).tolist() == [[2.0, 2.0]]
        assert cls_pool(states, mask).tolist() == [[1.0, 1.0]]
        assert last_token_pool(states, mask).tolist() == [[3.0, 3.0]]


# Devices.


def test_pick_device_on_a_cpu_machine() -> None:
    assert pick_device("auto") == torch.device("cpu")
    assert pick_device(" CPU ") == torch.device("cpu")


@pytest.mark.parametrize("setting", ["cuda", "cuda:1", "mps"])
def test_pick_device_refuses_missing_accelerators(setting: str) -> None:
    with pytest.raises(DeviceUnavailableError, match=r"EMBEDQ_DEVICE=.*set EMBEDQ_DEVICE=auto or cpu"):
        pick_device(setting)


@pytest.mark.parametrize("setting", ["gpu", "cuda:x", "tpu", ""])
def test_pick_device_rejects_unknown_settings(setting: str) -> None:
    with pytest.raises(ValueError, match="use auto, cpu, cuda, cuda:N or mps"):
        pick_device(setting)


# The per-process registry.


@pytest.fixture
def tiny_models_dir(tmp_path: Path, settings_env: SettingsEnv) -> Iterator[Path]:
    models = tmp_path / "models"
    make_tiny_bert(models / "tiny-a")
    for name in ("tiny-b", "acme/tiny-c"):
        shutil.copytree(models / "tiny-a", models / name)
    settings_env.set(EMBEDQ_MODELS_DIR=str(models), EMBEDQ_DEVICE="auto", EMBEDQ_MAX_RESIDENT_MODELS="2")
    registry.unload_all()
    yield models
    registry.unload_all()


def test_registry_keeps_a_small_lru(tiny_models_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="workers.runtime.registry"):
        first = registry.get_encoder("tiny-a")
        assert registry.get_encoder("tiny-a") is first
        registry.get_encoder("tiny-b")
        registry.get_encoder("tiny-a")  # now most recently used
        third = registry.get_encoder("acme/tiny-c")

    assert registry.resident_models() == ["tiny-a", "acme/tiny-c"]
    assert third.path == tiny_models_dir / "acme" / "tiny-c"
    assert registry.get_encoder("tiny-a") is first
    messages = [record.getMessage() for record in caplog.records]
    assert sum(message.startswith("loaded model") for message in messages) == 3
    assert any("unloaded model tiny-b" in message for message in messages)


def test_registry_shares_one_encoder_between_alias_and_full_name(tiny_models_dir: Path) -> None:
    assert registry.get_encoder("all-MiniLM-L6-v2") is registry.get_encoder(DEFAULT_MODEL)
    assert registry.resident_models() == [DEFAULT_MODEL]


def test_registry_reloads_a_model_whose_folder_was_replaced(tiny_models_dir: Path) -> None:
    texts = ["the cat", "a river in the city"]
    old = registry.get_encoder("tiny-a")
    before = old.encode(texts)
    # What a fine-tune with overwrite=true does: build the new folder aside, then rename it into place.
    make_tiny_bert(tiny_models_dir / ".staging", seed=1)
    storage.publish(tiny_models_dir / ".staging", tiny_models_dir / "tiny-a", tiny_models_dir / ".replaced")

    new = registry.get_encoder("tiny-a")
    assert new is not old and registry.resident_models() == ["tiny-a"]
    after = new.encode(texts)
    assert not np.allclose(before, after, atol=1e-3)
    np.testing.assert_allclose(after, Encoder(resolve_model("tiny-a", get_settings())).encode(texts), atol=1e-6)
    assert registry.get_encoder("tiny-a") is new  # unchanged since: no reload
