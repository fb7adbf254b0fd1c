"""Which worker processes hold which models: a small Redis hash per model, written by workers, read by the API.

A worker process writes one field (``host:pid|<load settings>``) of ``embedq:model-loads:<model name>`` when it
loads a model and deletes it when it unloads one; the load settings (requested precision, backend, family
override) tell apart the loads of one model under several aliases. The key expires ``LOAD_RECORD_TTL_S`` after
its last write, and workers refresh it while they use the model, so a worker that died without unloading
disappears by itself.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import asdict, dataclass

import redis

from app.catalog.resolver import ResolvedModel

logger = logging.getLogger(__name__)

KEY_PREFIX = "embedq:model-loads:"
LOAD_RECORD_TTL_S = 6 * 3600


@dataclass(frozen=True)
class ModelLoad:
    """One model loaded in one worker process, as that process reported it."""

    worker: str
    settings: str
    name: str
    family: str
    dimension: int
    max_seq_length: int
    precision: str
    backend: str
    device: str
    pooling: str
    normalize: bool
    hybrid: bool
    path: str
    source: str
    load_seconds: float
    loaded_at: str
    # Why it runs at ``precision``: set, or what auto measured and chose (workers/runtime/auto_precision.py).
    precision_reason: str = ""

    @property
    def field(self) -> str:
        """Return this load's field in the model's hash: the worker process and the load settings."""
        return f"{self.worker}|{self.settings}"


def load_settings(resolved: ResolvedModel) -> str:
    """Return what distinguishes one load of a model from another: requested precision, backend, family override."""
    return f"{resolved.precision}|{resolved.backend}|{resolved.family or ''}"


def this_worker() -> str:
    """Return the id a worker process reports its loads under: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def record_load(client: redis.Redis, load: ModelLoad) -> None:
    """Write (or refresh) ``load`` in Redis."""
    key = KEY_PREFIX + load.name
    pipe = client.pipeline()
    pipe.hset(key, load.field, json.dumps(asdict(load)))
    pipe.expire(key, LOAD_RECORD_TTL_S)
    pipe.execute()


def record_unload(client: redis.Redis, load: ModelLoad) -> None:
    """Remove ``load`` from Redis."""
    client.hdel(KEY_PREFIX + load.name, load.field)


def loads_of(client: redis.Redis, name: str) -> list[ModelLoad]:
    """Return the recorded loads of model ``name`` (its canonical name), oldest first."""
    return sorted(_parse(client.hgetall(KEY_PREFIX + name)), key=lambda load: load.loaded_at)


def all_loads(client: redis.Redis) -> dict[str, list[ModelLoad]]:
    """Return every recorded load, by model name."""
    result: dict[str, list[ModelLoad]] = {}
    for key in client.scan_iter(match=KEY_PREFIX + "*", count=100):
        name = (key.decode() if isinstance(key, bytes) else key)[len(KEY_PREFIX) :]
        loads = loads_of(client, name)
        if loads:
            result[name] = loads
    return result


def _parse(fields: dict[bytes, bytes]) -> list[ModelLoad]:
    loads = []
    for raw in fields.values():
        try:
            loads.append(ModelLoad(**json.loads(raw)))
        except (TypeError, ValueError):  # a record written by another embedq version: skip it, do not fail
            logger.warning("ignoring an unreadable model load record: %r", raw[:200])
    return loads
