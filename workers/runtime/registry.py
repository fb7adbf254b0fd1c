"""The models this worker process keeps loaded: a small LRU of Encoders, filled on first use."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

import torch

from app.catalog.resolver import ResolvedModel, resolve_model
from app.core.config import get_settings
from workers.runtime.device import pick_device
from workers.runtime.encoder import Encoder

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_resident: OrderedDict[ResolvedModel, Encoder] = OrderedDict()


def get_encoder(name: str) -> Encoder:
    """Return the loaded Encoder for model ``name``, loading it (and evicting the least recently used) if needed."""
    settings = get_settings()
    resolved = resolve_model(name, settings)
    # Loading under the lock is deliberate: two threads asking for one model must not load it twice.
    with _lock:
        encoder = _resident.get(resolved)
        if encoder is not None:
            _resident.move_to_end(resolved)
            return encoder
        capacity = settings.max_resident_models
        # Evict before loading, so resident weights stay within the budget even while the new model loads.
        while len(_resident) >= capacity:
            _evict_oldest(capacity)
        encoder = Encoder(resolved, device=pick_device(settings.device), batch_size=settings.encode_batch_size)
        _resident[resolved] = encoder
        logger.info(
            "loaded model %s from %s (%s) on %s in %.2fs",
            resolved.name,
            encoder.path,
            resolved.source,
            encoder.device,
            encoder.load_seconds,
        )
        return encoder


def _evict_oldest(capacity: int) -> None:
    evicted, encoder = _resident.popitem(last=False)
    on_cuda = encoder.device.type == "cuda"
    del encoder
    if on_cuda:
        # Hand the freed blocks back so the next model (or another process) can use that GPU memory.
        torch.cuda.empty_cache()
    logger.info("unloaded model %s to make room (max_resident_models=%d)", evicted.name, capacity)


def resident_models() -> list[str]:
    """Return the names of the loaded models, least recently used first."""
    with _lock:
        return [resolved.name for resolved in _resident]


def unload_all() -> None:
    """Drop every loaded model, e.g. at worker shutdown or between tests."""
    with _lock:
        _resident.clear()
