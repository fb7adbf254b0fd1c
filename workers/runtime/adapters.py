"""LoRA adapter folders: served as their base model's weights with the adapter merged in.

A fine-tuned LoRA alias is a sentence-transformers folder (tokenizer, pooling, modules.json) whose weights are
only a peft adapter. peft records the base as the absolute path it was trained from, which breaks as soon as
the models volume is mounted elsewhere or the base comes from another package version, so embedq writes its
own pointer, ``embedq_adapter.json``, naming the base by model name; the resolver finds that base wherever
this host keeps it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, PreTrainedModel

from app.catalog.resolver import resolve_model
from app.core.config import get_settings

logger = logging.getLogger(__name__)

ADAPTER_POINTER = "embedq_adapter.json"


class AdapterBaseError(RuntimeError):
    """An adapter folder whose base model cannot be found or is itself an adapter."""


def write_pointer(folder: Path, base_model: str) -> None:
    """Record in adapter folder ``folder`` that its base is the model named ``base_model``."""
    (folder / ADAPTER_POINTER).write_text(json.dumps({"base_model": base_model, "kind": "lora"}, indent=2) + "\n")


def base_model_of(folder: Path | None) -> str | None:
    """Return the base model name an adapter folder points at, or None for an ordinary model folder."""
    if folder is None or not (folder / ADAPTER_POINTER).is_file():
        return None
    pointer: dict[str, Any] = json.loads((folder / ADAPTER_POINTER).read_text())
    return str(pointer["base_model"])


def load_transformer(model_dir: Path, transformer_dir: Path, dtype: torch.dtype) -> PreTrainedModel:
    """Return the Hugging Face model of a model folder: its own weights, or its base's with its adapter merged."""
    base_name = base_model_of(model_dir)
    if base_name is None:
        return AutoModel.from_pretrained(transformer_dir, dtype=dtype, local_files_only=True)
    return _merged_adapter(model_dir, base_name, dtype)


def _merged_adapter(adapter_dir: Path, base_name: str, dtype: torch.dtype) -> PreTrainedModel:
    from peft import PeftModel

    try:
        base = resolve_model(base_name, get_settings())
    except (LookupError, ValueError) as exc:
        raise AdapterBaseError(
            f"the LoRA adapter {adapter_dir} needs its base model {base_name!r}, which this host cannot load "
            f"({exc}): make {base_name!r} available (EMBEDQ_MODELS_DIR or the Hugging Face cache)"
        ) from exc
    if base.path is None:
        raise AdapterBaseError(
            f"the LoRA adapter {adapter_dir} needs its base model {base_name!r} on disk: pull it first"
        )
    if base_model_of(base.path) is not None:
        raise AdapterBaseError(f"{adapter_dir}'s base {base_name!r} is itself an adapter; embedq stacks none")
    model = AutoModel.from_pretrained(_hf_folder(base.path), dtype=dtype, local_files_only=True)
    # Merged once at load, the adapter costs nothing per request: the model runs like its base.
    merged = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).merge_and_unload()
    logger.info("merged LoRA adapter %s into base %s (%s)", adapter_dir, base_name, base.path)
    return merged


def _hf_folder(model_dir: Path) -> Path:
    # A sentence-transformers folder may keep the Hugging Face model in a subfolder (0_Transformer).
    modules_file = model_dir / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.is_file() else []
    for module in modules:
        if str(module.get("type", "")).endswith(".Transformer"):
            return model_dir / str(module.get("path", ""))
    return model_dir
