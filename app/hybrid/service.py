"""BGE-M3 requests: check the model can answer them (no torch: by its family and folder), then ask a sync worker."""

from __future__ import annotations

from typing import Any

from app.catalog.access import MODEL_API_ERRORS, check_model
from app.catalog.families import M3_COLBERT_HEAD, M3_SPARSE_HEAD, detect_family, has_m3_heads
from app.catalog.resolver import local_known_models
from app.core.config import Settings
from app.core.errors import EmbedqError
from app.core.security import Principal
from app.inference.dispatch import infer


class NotHybridModelError(EmbedqError):
    """The model has no sparse/ColBERT heads."""

    code = "model_not_hybrid"


def check_hybrid_model(name: str | None, settings: Settings, principal: Principal) -> str:
    """Return the model name to use, or raise 400 unless it is a BGE-M3 model with its heads (404 if unknown)."""
    asked = name or settings.default_model
    resolved = check_model(asked, settings, principal, MODEL_API_ERRORS)
    family = detect_family(resolved.name, resolved.path, resolved.family)
    if not (family.hybrid and has_m3_heads(resolved.path)):
        raise NotHybridModelError(
            f"model {asked} (family {family.name}) has no sparse/ColBERT heads: hybrid vectors and MaxSim rerank "
            f"need a BGE-M3 model (family bge-m3, e.g. BAAI/bge-m3) whose folder holds {M3_SPARSE_HEAD} and "
            f"{M3_COLBERT_HEAD}. Such models here: {', '.join(hybrid_models(settings)) or '(none)'}",
            param="model",
        )
    return asked


def hybrid_models(settings: Settings) -> list[str]:
    """Return the names a request may use for hybrid vectors and rerank."""
    return [
        name
        for name, resolved in local_known_models(settings)
        if resolved.path is not None and detect_family(resolved.name, resolved.path, resolved.family).hybrid
    ]


async def hybrid(model: str, texts: list[str], *, return_colbert: bool) -> list[dict[str, Any]]:
    """Return one item of dense, sparse and (if asked) ColBERT vectors per text, from a sync worker."""
    result = await infer("hybrid", model, {"texts": texts, "return_colbert": return_colbert})
    return list(result["data"])


async def rerank(model: str, query: str, candidates: list[str], batch_size: int) -> list[float]:
    """Return the MaxSim score of each candidate against ``query``, from a sync worker."""
    result = await infer("rerank", model, {"query": query, "candidates": candidates, "batch_size": batch_size})
    return [float(score) for score in result["scores"]]
