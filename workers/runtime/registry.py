"""The models this worker process keeps loaded: a small LRU of Encoders, filled on first use.

A registered model (fine-tuned or pushed) is installed from the artifact store before it is resolved
(``app.catalog.model_cache``). A resident model whose EMBEDQ_MODELS_DIR folder changed since it was loaded
(a fine-tune overwrote its alias: ``ResolvedModel.revision``), or a LoRA alias whose base folder changed, is
dropped and loaded again on its next use, in every worker process, since each one checks on use.

Each load and unload is recorded in Redis (``app.catalog.loads``) for ``GET /v1/models``; a record that cannot
be written is logged and skipped, never a reason to fail a load.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime

import redis
import torch

from app.catalog.loads import LOAD_RECORD_TTL_S, ModelLoad, load_settings, record_load, record_unload, this_worker
from app.catalog.model_cache import ensure_installed
from app.catalog.resolver import ResolvedModel, UnknownModelError, resolve_model
from app.core.config import Settings, get_settings
from workers.runtime.adapters import served_revision
from workers.runtime.capabilities import load_encoder
from workers.runtime.device import pick_device
from workers.runtime.encoder import Encoder
from workers.runtime.m3 import m3_heads_of

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_resident: OrderedDict[ResolvedModel, Encoder] = OrderedDict()
_records: dict[ResolvedModel, ModelLoad] = {}
_refreshed: dict[ResolvedModel, float] = {}
_revisions: dict[ResolvedModel, str | None] = {}
# A record is refreshed at most this often while its model is in use, well within its expiry.
_REFRESH_EVERY_S = LOAD_RECORD_TTL_S / 6


def get_encoder(name: str) -> Encoder:
    """Return the loaded Encoder for model ``name``, loading it (and evicting the least recently used) if needed."""
    settings = get_settings()
    resolved = _resolve_installed(name, settings)
    # Loading under the lock is deliberate: two threads asking for one model must not load it twice.
    revision = served_revision(resolved)
    with _lock:
        encoder = _resident.get(resolved)
        if encoder is not None and _revisions.get(resolved) != revision:
            _unload(resolved, reason=f"its folder changed (revision {_revisions.get(resolved)} -> {revision})")
            encoder = None
        if encoder is not None:
            _resident.move_to_end(resolved)
            if time.monotonic() - _refreshed.get(resolved, 0.0) > _REFRESH_EVERY_S:
                _write_record(resolved)
            return encoder
        capacity = settings.max_resident_models
        # Evict before loading, so resident weights stay within the budget even while the new model loads.
        while len(_resident) >= capacity:
            _evict_oldest(capacity)
        encoder = load_encoder(
            resolved,
            device=pick_device(settings.device),
            batch_size=settings.encode_batch_size,
            max_seq_length=settings.max_seq_length,
        )
        _resident[resolved] = encoder
        _revisions[resolved] = revision
        _records[resolved] = _load_of(resolved, encoder)
        _write_record(resolved)
        logger.info(
            "loaded model %s from %s (%s) on %s in %.2fs",
            resolved.name,
            encoder.path,
            resolved.source,
            encoder.device,
            encoder.load_seconds,
        )
        return encoder


def _resolve_installed(name: str, settings: Settings) -> ResolvedModel:
    """Resolve ``name`` once this host holds the registered revision of it (installed from the artifact store).

    A name this host cannot resolve is looked up in Postgres again at once: it may have been registered a moment
    ago by a training worker on another host.
    """
    ensure_installed(name, settings)
    try:
        return resolve_model(name, settings)
    except UnknownModelError:
        if not ensure_installed(name, settings, fresh=True):
            raise
    return resolve_model(name, settings)


def _evict_oldest(capacity: int) -> None:
    _unload(next(iter(_resident)), reason=f"to make room (max_resident_models={capacity})")


def _unload(resolved: ResolvedModel, reason: str) -> None:
    encoder = _resident.pop(resolved)
    _forget(resolved)
    on_cuda = encoder.device.type == "cuda"
    del encoder
    if on_cuda:
        # Hand the freed blocks back so the next model (or another process) can use that GPU memory.
        torch.cuda.empty_cache()
    logger.info("unloaded model %s %s", resolved.name, reason)


def resident_models() -> list[str]:
    """Return the names of the loaded models, least recently used first."""
    with _lock:
        return [resolved.name for resolved in _resident]


def unload_all() -> None:
    """Drop every loaded model, e.g. at worker shutdown or between tests."""
    with _lock:
        for resolved in list(_resident):
            _forget(resolved)
        _resident.clear()


def _load_of(resolved: ResolvedModel, encoder: Encoder) -> ModelLoad:
    return ModelLoad(
        worker=this_worker(),
        settings=load_settings(resolved),
        name=encoder.name,
        family=encoder.family.name,
        dimension=encoder.dimension,
        max_seq_length=encoder.max_seq_length,
        precision=encoder.precision,
        precision_reason=encoder.precision_reason,
        backend=encoder.backend,
        device=str(encoder.device),
        pooling=encoder.pooling_mode,
        normalize=encoder.normalize_default,
        hybrid=m3_heads_of(encoder) is not None,
        path=str(encoder.path),
        source=encoder.source,
        load_seconds=round(encoder.load_seconds, 3),
        loaded_at=datetime.now(UTC).isoformat(),
    )


def _redis() -> redis.Redis | None:
    url = get_settings().redis_url
    return redis.Redis.from_url(url, socket_timeout=2) if url else None


def _write_record(resolved: ResolvedModel) -> None:
    _refreshed[resolved] = time.monotonic()
    try:
        client = _redis()
        if client is not None:
            record_load(client, _records[resolved])
    except redis.RedisError as exc:
        logger.warning(
            "could not record the load of %s in Redis (%s); GET /v1/models will not show it", resolved.name, exc
        )


def _forget(resolved: ResolvedModel) -> None:
    record = _records.pop(resolved, None)
    _refreshed.pop(resolved, None)
    _revisions.pop(resolved, None)
    if record is None:
        return
    try:
        client = _redis()
        if client is not None:
            record_unload(client, record)
    except redis.RedisError as exc:
        logger.warning("could not remove the load record of %s from Redis (%s)", resolved.name, exc)
