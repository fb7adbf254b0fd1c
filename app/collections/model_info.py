"""A model's vector dimension read from its folder's config files, without loading it (the API has no torch)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from app.catalog.resolver import resolve_model
from app.core.config import Settings

log = logging.getLogger(__name__)


def model_dimension(name: str, settings: Settings) -> int | None:
    """Return the dimension of ``name``'s vectors, or None when only loading the model can tell.

    embedq's encoder pools the transformer's hidden states (no projection layers), so the dimension is the
    text model's ``hidden_size``. None for a model still on the Hub or a folder without ``config.json``:
    the first worker that loads it records the dimension instead.
    """
    resolved = resolve_model(name, settings)
    if resolved.path is None:
        return None
    for folder in _transformer_dirs(resolved.path):
        config = _read_json(folder / "config.json")
        if isinstance(config, dict):
            return _hidden_size(config)
    return None


def _transformer_dirs(model_dir: Path) -> list[Path]:
    # Old sentence-transformers folders keep the Hugging Face model in a subfolder such as 0_Transformer.
    modules = _read_json(model_dir / "modules.json")
    subfolders = [
        model_dir / str(m.get("path", ""))
        for m in (modules if isinstance(modules, list) else [])
        if isinstance(m, dict) and str(m.get("type", "")).endswith(".Transformer")
    ]
    return [*subfolders, model_dir]


def _hidden_size(config: dict[str, Any]) -> int | None:
    for section in (config.get("text_config"), config):
        if isinstance(section, dict):
            for key in ("hidden_size", "d_model", "n_embd"):
                value = section.get(key)
                if isinstance(value, int) and value > 0:
                    return value
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        log.warning("could not read %s", path, exc_info=True)
        return None
