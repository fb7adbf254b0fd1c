"""Reading a model folder's own files without loading the model: its JSON configs and where its transformer is."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# In a LoRA adapter folder: the name of its base model (written by the trainer, read by workers/runtime/adapters).
ADAPTER_POINTER = "embedq_adapter.json"


def read_json(path: Path) -> Any:
    """Return the parsed JSON at ``path``, or None when it is missing or unreadable (with a warning)."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        logger.warning("could not read %s: ignoring it", path, exc_info=True)
        return None


def transformer_dirs(model_dir: Path) -> list[Path]:
    """Return the folders that may hold the Hugging Face model, best first (``model_dir`` itself last).

    Old sentence-transformers folders keep the Hugging Face model in a subfolder such as 0_Transformer,
    named by ``modules.json``.
    """
    modules = read_json(model_dir / "modules.json")
    subfolders = [
        model_dir / str(m.get("path", ""))
        for m in (modules if isinstance(modules, list) else [])
        if isinstance(m, dict) and str(m.get("type", "")).endswith(".Transformer")
    ]
    return [*subfolders, model_dir]


def adapter_base(model_dir: Path) -> str | None:
    """Return the base model name a LoRA adapter folder points at, or None for an ordinary model folder."""
    pointer = read_json(model_dir / ADAPTER_POINTER)
    return str(pointer["base_model"]) if isinstance(pointer, dict) and "base_model" in pointer else None
