"""What ``GET /v1/models`` and ``embedq models list`` say about each model: resolved here, loads read from Redis.

Everything but the load facts comes from the name and the model folder's own files (no torch): a model that
no worker has loaded yet still shows its source, path, family, dimension and token limit.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import redis

from app.catalog.dimension import folder_dimension
from app.catalog.families import detect_family, has_m3_heads
from app.catalog.files import read_json
from app.catalog.loads import ModelLoad, all_loads, load_settings
from app.catalog.resolver import ResolvedModel, UnknownModelError, known_models, resolve_model
from app.catalog.schemas import ModelList, ModelObject, WorkerLoad
from app.catalog.sources import cached_names
from app.catalog.tasks import model_tasks
from app.core.config import Settings

logger = logging.getLogger(__name__)

# Tokenizers without a limit report a huge sentinel; only values below this are real limits.
_REAL_LIMIT = 1_000_000


def read_loads(settings: Settings) -> dict[str, list[ModelLoad]]:
    """Return the model loads workers recorded in Redis, or none (with a warning) when Redis cannot be read."""
    if not settings.redis_url:
        return {}
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_timeout=settings.readiness_timeout_s)
        return all_loads(client)
    except redis.RedisError as exc:
        logger.warning("could not read model loads from Redis (%s): listing models without them", exc)
        return {}


def list_models(
    settings: Settings,
    loads: dict[str, list[ModelLoad]],
    hidden: frozenset[str] | set[str] = frozenset(),
    registered: Mapping[str, str] | None = None,
) -> ModelList:
    """Return every model a request may name without a download (caches included), and any model a worker loaded.

    ``hidden``: names left out, the fine-tuned aliases of tenants other than the caller's. ``registered``: the
    registered models (name to revision) the caller sees, listed even where this host holds no copy of them.
    """
    registered = registered or {}
    names = known_models(settings)
    names += sorted((set(cached_names(settings)) | set(loads) | set(registered)) - set(names))
    names = [name for name in names if name not in hidden]
    data = []
    for name in names:
        try:
            data.append(describe(name, _resolve(name, settings, registered), settings, loads))
        except (LookupError, ValueError) as exc:  # a loaded model this API cannot resolve: say so, list the rest
            logger.info("not listing %s: %s", name, exc)
    return ModelList(data=data)


def _resolve(name: str, settings: Settings, registered: Mapping[str, str]) -> ResolvedModel:
    try:
        return resolve_model(name, settings)
    except UnknownModelError:
        if name not in registered:
            raise
        return ResolvedModel(name=name, path=None, source="artifact", revision=registered[name])


def describe(name: str, resolved: ResolvedModel, settings: Settings, loads: dict[str, list[ModelLoad]]) -> ModelObject:
    """Return the model object of ``name``, which resolved to ``resolved``."""
    family = detect_family(resolved.name, resolved.path, resolved.family)
    mine = [load for load in loads.get(resolved.name, []) if _matches(load, resolved)]
    latest = mine[-1] if mine else None
    config = read_json(resolved.path / "config.json") if resolved.path is not None else None
    tasks = model_tasks(resolved.name, resolved.path, family)
    return ModelObject(
        id=name,
        created=_created(resolved.path),
        owned_by=resolved.name.split("/")[0] if "/" in resolved.name else "embedq",
        alias_of=resolved.name if resolved.alias is not None else None,
        source=resolved.source,
        path=str(resolved.path) if resolved.path is not None else None,
        family=family.name,
        # A reranker's hidden size is no vector size: it gives scores, not vectors.
        dimension=None if "embed" not in tasks else latest.dimension if latest else folder_dimension(resolved.path),
        max_length=latest.max_seq_length
        if latest
        else _max_length(resolved.path, config, family.max_seq_length, settings),
        precision=latest.precision if latest else resolved.precision,
        precision_reason=latest.precision_reason or None if latest else None,
        backend=resolved.backend,
        device=latest.device if latest else None,
        load_seconds=latest.load_seconds if latest else None,
        hybrid=latest.hybrid if latest else family.hybrid and has_m3_heads(resolved.path),
        tasks=tasks,
        loaded=latest is not None,
        loads=[WorkerLoad.model_validate(load, from_attributes=True) for load in mine],
    )


def _matches(load: ModelLoad, resolved: ResolvedModel) -> bool:
    return load.settings == load_settings(resolved)


def _created(path: Path | None) -> int:
    try:
        return int(path.stat().st_mtime) if path is not None else 0
    except OSError:
        return 0


def _max_length(path: Path | None, config: Any, family_limit: int | None, settings: Settings) -> int | None:
    if path is None:
        return settings.max_seq_length or family_limit
    sentence = read_json(path / "sentence_bert_config.json")
    tokenizer = read_json(path / "tokenizer_config.json")
    configured = sentence.get("max_seq_length") if isinstance(sentence, dict) else None
    candidates = (
        [configured]
        if isinstance(configured, int)
        else [
            tokenizer.get("model_max_length") if isinstance(tokenizer, dict) else None,
            config.get("max_position_embeddings") if isinstance(config, dict) else None,
            family_limit,
        ]
    )
    limits = [n for n in candidates if isinstance(n, int) and 0 < n < _REAL_LIMIT]
    if settings.max_seq_length is not None:
        limits.append(settings.max_seq_length)
    return min(limits) if limits else None
