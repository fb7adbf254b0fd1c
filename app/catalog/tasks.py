"""What a model is for: embeddings, reranking (a cross-encoder), or both (BGE-M3), read from its folder (no torch).

A cross-encoder is a sequence classifier with one output, the relevance logit of a (query, text) pair: a
folder whose ``config.json`` names a ``*ForSequenceClassification`` architecture, or whose
``config_sentence_transformers.json`` says ``"model_type": "CrossEncoder"``, with ``num_labels`` 1. A model
not downloaded yet is judged by its name (``cross-encoder/...``, ``*rerank*``), as hubs name them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from app.catalog.families import Family, has_m3_heads
from app.catalog.files import read_json, transformer_dirs

Task = Literal["embed", "rerank"]

_CLASSIFIER_SUFFIX = "ForSequenceClassification"
_RERANKER_NAMES = ("cross-encoder/", "rerank")


def model_tasks(name: str, folder: Path | None, family: Family) -> list[Task]:
    """Return what model ``name`` (folder ``folder``, family ``family``) serves: embed, rerank, or both."""
    if is_cross_encoder(name, folder):
        return ["rerank"]
    if family.hybrid and has_m3_heads(folder):
        return ["embed", "rerank"]
    return ["embed"]


def is_cross_encoder(name: str, folder: Path | None) -> bool:
    """Return whether the model is a one-label sequence classifier (by its folder, else by its name)."""
    if folder is None:
        lowered = name.lower()
        return any(part in lowered for part in _RERANKER_NAMES)
    config = read_json(transformer_dirs(folder)[0] / "config.json") or read_json(folder / "config.json")
    if not isinstance(config, dict) or num_labels(config) != 1:
        return False
    st_config = read_json(folder / "config_sentence_transformers.json")
    says_cross_encoder = isinstance(st_config, dict) and st_config.get("model_type") == "CrossEncoder"
    architectures = config.get("architectures") or []
    return says_cross_encoder or any(str(a).endswith(_CLASSIFIER_SUFFIX) for a in architectures)


def num_labels(config: dict[str, Any]) -> int:
    """Return the classifier's output count as transformers reads it: id2label, else num_labels, else 2."""
    labels = config.get("id2label")
    if isinstance(labels, dict) and labels:
        return len(labels)
    count = config.get("num_labels")
    return count if isinstance(count, int) else 2


class NotAnEmbeddingModelError(ValueError):
    """A model that scores pairs named where vectors are wanted."""


def require_embedding(name: str, folder: Path | None, family: Family) -> None:
    """Raise NotAnEmbeddingModelError naming the fix when model ``name`` gives no vectors (a cross-encoder)."""
    if "embed" not in model_tasks(name, folder, family):
        raise NotAnEmbeddingModelError(
            f"model {name} is a reranker (a cross-encoder) and gives no vectors: embed with an embedding model, "
            "and use this one at POST /rerank, /v1/rerank or a search's rerank stage"
        )
