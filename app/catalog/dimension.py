"""A model's vector dimension read from its folder's config files, without loading it (the API has no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.catalog.files import read_json, transformer_dirs
from app.catalog.repository import RegisteredModelRepository
from app.catalog.resolver import UnknownModelError, resolve_model
from app.core.config import Settings


def model_dimension(name: str, settings: Settings, session: Session | None = None) -> int | None:
    """Return the dimension of ``name``'s vectors, or None when only loading the model can tell.

    With ``session``, a registered model that this host has not installed answers from its row.
    """
    try:
        return folder_dimension(resolve_model(name, settings).path)
    except UnknownModelError:
        registered = RegisteredModelRepository(session).registered(name) if session is not None else None
        if registered is None or registered.revision is None:
            raise
        return registered.dimension or None


def folder_dimension(model_dir: Path | None) -> int | None:
    """Return the dimension of the vectors of the model in ``model_dir``, or None when only loading it can tell.

    embedq's encoder pools the transformer's hidden states (no projection layers), so the dimension is the
    text model's ``hidden_size`` (``d_model`` or ``n_embd`` in some configs). None for a model still on the
    Hub (no folder) or a folder without ``config.json``: the first worker that loads it records the dimension.
    """
    if model_dir is None:
        return None
    for folder in transformer_dirs(model_dir):
        config = read_json(folder / "config.json")
        if isinstance(config, dict):
            return _hidden_size(config)
    return None


def _hidden_size(config: dict[str, Any]) -> int | None:
    for section in (config.get("text_config"), config):
        if isinstance(section, dict):
            for key in ("hidden_size", "d_model", "n_embd"):
                value = section.get(key)
                if isinstance(value, int) and value > 0:
                    return value
    return None
