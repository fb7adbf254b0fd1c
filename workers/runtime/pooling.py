"""How a model turns token states into one vector: read from its sentence-transformers files, applied in torch."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

logger = logging.getLogger(__name__)

PoolingMode = Literal["mean", "cls", "lasttoken"]

# Legacy boolean keys (sentence-transformers < 6) in the order sentence-transformers concatenates them.
_LEGACY_MODE_KEYS: dict[str, str] = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}

# modules.json types by their last dotted part: old files say `sentence_transformers.models.Pooling`,
# files saved by sentence-transformers 6 say `sentence_transformers.sentence_transformer.modules.pooling.Pooling`.
_TRANSFORMER, _POOLING, _NORMALIZE = "Transformer", "Pooling", "Normalize"


class UnsupportedModelError(ValueError):
    """A model folder whose sentence-transformers pipeline this runtime cannot reproduce exactly."""


@dataclass(frozen=True)
class PoolingConfig:
    """The pooling mode and whether the folder's pipeline L2-normalizes its output."""

    mode: PoolingMode = "mean"
    normalize: bool = False


def read_pooling_config(model_dir: Path, *, family_default: PoolingConfig | None = None) -> PoolingConfig:
    """Return the pooling of the sentence-transformers folder ``model_dir``.

    A folder without modules.json gets ``family_default`` (its model family's known pooling), else mean
    pooling with a warning.
    """
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        modelscope = _modelscope_pooling(model_dir)
        if modelscope is not None:
            return modelscope
        if family_default is not None:
            logger.info("%s has no modules.json: using its model family's pooling %s", model_dir, family_default)
            return family_default
        logger.warning(
            "%s has no modules.json: using mean pooling without normalization; add the "
            "sentence-transformers files (modules.json, 1_Pooling/config.json) to pin the pooling",
            model_dir,
        )
        return PoolingConfig()
    modules: list[dict[str, Any]] = json.loads(modules_file.read_text())
    kinds = [str(module.get("type", "")).rsplit(".", 1)[-1] for module in modules]
    unsupported = sorted({kind for kind in kinds if kind not in (_TRANSFORMER, _POOLING, _NORMALIZE)})
    if unsupported:
        raise UnsupportedModelError(
            f"{model_dir} uses sentence-transformers modules {', '.join(unsupported)} that embedq's encoder "
            "does not implement; use a model made of Transformer, Pooling and Normalize modules only"
        )
    normalize = _NORMALIZE in kinds
    pooling = next((m for m, kind in zip(modules, kinds, strict=True) if kind == _POOLING), None)
    if pooling is None:
        logger.warning("%s has no Pooling module in modules.json: using mean pooling", model_dir)
        return PoolingConfig(normalize=normalize)
    config_file = model_dir / str(pooling.get("path", "")) / "config.json"
    if not config_file.is_file():
        logger.warning("%s has no pooling config at %s: using mean pooling", model_dir, config_file)
        return PoolingConfig(normalize=normalize)
    return PoolingConfig(mode=_pooling_mode(json.loads(config_file.read_text()), config_file), normalize=normalize)


def _modelscope_pooling(model_dir: Path) -> PoolingConfig | None:
    """Return the pooling a ModelScope sentence-embedding folder's configuration.json asks for, if it is one.

    ModelScope's own pipeline cannot run under transformers 5, so embedq loads such a folder through
    transformers and pools the way ModelScope's sentence-embedding model does: ``emb_pooler_type`` cls (its
    default) or avg, normalized if ``normalize`` (default false).
    """
    config_file = model_dir / "configuration.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
    except ValueError:
        logger.warning("%s is not valid JSON: ignoring it", config_file)
        return None
    if not isinstance(config, dict) or config.get("task") not in ("sentence-embedding", "sentence_embedding"):
        return None
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    pooler = str(model.get("emb_pooler_type", "cls"))
    modes: dict[str, PoolingMode] = {"cls": "cls", "avg": "mean"}
    if pooler not in modes:
        raise UnsupportedModelError(
            f"{config_file} asks for ModelScope pooling {pooler!r}; embedq supports cls and avg for ModelScope folders"
        )
    return PoolingConfig(mode=modes[pooler], normalize=bool(model.get("normalize", False)))


def _pooling_mode(config: dict[str, Any], source: Path) -> PoolingMode:
    mode = config.get("pooling_mode")
    if mode is None:
        active = [name for key, name in _LEGACY_MODE_KEYS.items() if config.get(key)]
        # sentence-transformers itself falls back to mean when no legacy flag is set.
        mode = active or ["mean"]
    modes = [mode] if isinstance(mode, str) else list(mode)
    if len(modes) != 1 or modes[0] not in _POOLERS:
        raise UnsupportedModelError(
            f"{source} asks for pooling {modes}; embedq supports exactly one of {sorted(_POOLERS)}"
        )
    return modes[0]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return the mean of the unmasked token states, [batch, seq, dim] -> [batch, dim]."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    total = (hidden * weights).sum(dim=1)
    return total / weights.sum(dim=1).clamp(min=1e-9)


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return the state of each row's first unmasked token (position 0 unless padded on the left)."""
    first = mask.to(torch.int32).argmax(dim=1)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), first]


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return the state of each row's last unmasked token, for right- and left-padded batches alike."""
    seq_len = mask.size(1)
    last = seq_len - 1 - mask.flip(1).to(torch.int32).argmax(dim=1)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


_POOLERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": mean_pool,
    "cls": cls_pool,
    "lasttoken": last_token_pool,
}


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: PoolingMode) -> torch.Tensor:
    """Return one vector per row of ``hidden`` pooled by ``mode``."""
    return _POOLERS[mode](hidden, mask)
