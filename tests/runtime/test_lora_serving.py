"""LoRA aliases in a worker: one resident base serves the base model and every adapter over it.

Tiny real BERTs with real peft adapters (random, non-zero LoRA weights, so each adapter changes the output).
"""

from __future__ import annotations

import gc
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from support.settings import SettingsEnv
from support.tiny_models import make_tiny_bert
from transformers import AutoModel

from app.catalog.resolver import resolve_model
from app.core.config import get_settings
from app.training import storage
from workers.runtime import registry
from workers.runtime.adapters import ModelView, write_pointer
from workers.runtime.encoder import Encoder

TEXTS = ["the cat in the house", "music by the river", "a blue machine learning model"]
BASE = "tiny-base"


def make_adapter(models_dir: Path, name: str, seed: int) -> Path:
    """Write ``models_dir/name``: an embedq LoRA folder over ``BASE`` with random adapter weights."""
    base_dir = models_dir / BASE
    folder = models_dir / name
    shutil.copytree(base_dir, folder, ignore=shutil.ignore_patterns("model.safetensors"))
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False)
    get_peft_model(AutoModel.from_pretrained(base_dir), config).save_pretrained(folder)
    write_pointer(folder, BASE)
    return folder


def merged_reference(models_dir: Path, adapter: Path) -> np.ndarray:
    """Return what the adapter should embed: its weights merged into a private copy of the base."""
    model = AutoModel.from_pretrained(models_dir / BASE)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    base = Encoder(resolve_model(BASE, get_settings()))
    base.model = merged.eval()
    return base.encode(TEXTS)


@pytest.fixture
def models_dir(tmp_path: Path, settings_env: SettingsEnv) -> Iterator[Path]:
    models = tmp_path / "models"
    make_tiny_bert(models / BASE)
    make_adapter(models, "lora-a", seed=1)
    make_adapter(models, "lora-b", seed=2)
    settings_env.set(EMBEDQ_MODELS_DIR=str(models), EMBEDQ_DEVICE="cpu", EMBEDQ_MAX_RESIDENT_MODELS="3")
    registry.unload_all()
    yield models
    registry.unload_all()


def base_weights(encoder: Encoder) -> int:
    view = encoder.model
    assert isinstance(view, ModelView)
    return view.base.model.embeddings.word_embeddings.weight.data_ptr()


def test_adapters_attach_to_the_resident_base_and_each_embeds_as_if_merged(models_dir: Path) -> None:
    base = registry.get_encoder(BASE)
    base_before = base.encode(TEXTS)
    lora_a = registry.get_encoder("lora-a")
    lora_b = registry.get_encoder("lora-b")

    # One copy of the base weights in the process, with both adapters attached to it.
    assert base_weights(lora_a) == base_weights(lora_b) == base_weights(base)
    assert lora_a.model.base is base.model.base and len(base.model.base.adapters()) == 2

    # Interleaved: each encoder gets its own adapter (or none), whatever ran before.
    a, b, plain = lora_a.encode(TEXTS), lora_b.encode(TEXTS), base.encode(TEXTS)
    np.testing.assert_allclose(plain, base_before, atol=1e-6)
    np.testing.assert_allclose(a, merged_reference(models_dir, models_dir / "lora-a"), atol=1e-5)
    np.testing.assert_allclose(b, merged_reference(models_dir, models_dir / "lora-b"), atol=1e-5)
    assert not np.allclose(a, plain, atol=1e-3) and not np.allclose(a, b, atol=1e-3)
    np.testing.assert_allclose(lora_a.encode(TEXTS), a, atol=1e-6)


def test_an_adapter_loaded_before_its_base_shares_it_too(models_dir: Path) -> None:
    lora = registry.get_encoder("lora-a")
    base = registry.get_encoder(BASE)
    assert base_weights(base) == base_weights(lora)
    assert base.model.adapter is None and lora.model.adapter is not None


def test_an_unloaded_adapter_is_detached_from_the_base(models_dir: Path) -> None:
    base = registry.get_encoder(BASE)
    before = base.encode(TEXTS)
    registry.get_encoder("lora-a")
    registry.get_encoder("lora-b")
    assert len(base.model.base.adapters()) == 2
    registry.get_encoder(BASE)  # most recently used: lora-a goes first
    make_tiny_bert(models_dir / "other")
    registry.get_encoder("other")  # evicts lora-a (capacity 3)
    gc.collect()
    assert registry.resident_models() == ["lora-b", BASE, "other"]
    assert len(base.model.base.adapters()) == 1
    np.testing.assert_allclose(base.encode(TEXTS), before, atol=1e-6)
    make_tiny_bert(models_dir / "another")
    registry.get_encoder("another")  # evicts lora-b: no adapter left
    gc.collect()
    assert base.model.base.adapters() == []
    np.testing.assert_allclose(base.encode(TEXTS), before, atol=1e-6)
    # And one can attach again.
    np.testing.assert_allclose(
        registry.get_encoder("lora-a").encode(TEXTS), merged_reference(models_dir, models_dir / "lora-a"), atol=1e-5
    )


def test_an_overwritten_adapter_is_reattached_and_the_old_one_detached(models_dir: Path) -> None:
    old = registry.get_encoder("lora-a")
    before = old.encode(TEXTS)
    shared = old.model.base
    # A fine-tune with overwrite=true: the new adapter folder is renamed into place.
    make_adapter(models_dir, "staging", seed=3)
    storage.publish(models_dir / "staging", models_dir / "lora-a", models_dir / ".replaced")
    del old

    new = registry.get_encoder("lora-a")
    gc.collect()
    after = new.encode(TEXTS)
    assert new.model.base is shared and len(shared.adapters()) == 1
    assert not np.allclose(before, after, atol=1e-3)
    np.testing.assert_allclose(after, merged_reference(models_dir, models_dir / "lora-a"), atol=1e-5)


def test_an_adapter_is_reloaded_over_its_base_when_the_base_is_overwritten(models_dir: Path) -> None:
    old = registry.get_encoder("lora-a")
    before = old.encode(TEXTS)
    # A full fine-tune with overwrite=true replaces the base folder the adapter points at.
    make_tiny_bert(models_dir / "staging", seed=5)
    storage.publish(models_dir / "staging", models_dir / BASE, models_dir / ".replaced")

    new = registry.get_encoder("lora-a")
    assert new is not old and new.model.base is not old.model.base
    after = new.encode(TEXTS)
    assert not np.allclose(before, after, atol=1e-3)
    np.testing.assert_allclose(after, merged_reference(models_dir, models_dir / "lora-a"), atol=1e-5)
    assert registry.get_encoder("lora-a") is new
