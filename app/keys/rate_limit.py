"""Requests per minute per key, counted in Redis so the limit holds across every API process."""

from __future__ import annotations

import math
import os
import time

import redis

_clients: dict[tuple[int, str], redis.Redis] = {}


def _client(redis_url: str) -> redis.Redis:
    # One pool per process and URL; a forked API worker builds its own.
    key = (os.getpid(), redis_url)
    client = _clients.get(key)
    if client is None:
        client = _clients[key] = redis.Redis.from_url(redis_url, socket_timeout=2.0)
    return client


def hit_rate_limit(redis_url: str, key_id: str, limit: int, *, now: float | None = None) -> int | None:
    """Count one request of ``key_id``; return None if it is within ``limit`` this minute, else seconds to wait.

    A fixed one-minute window (INCR, then EXPIRE so the counter outlives its minute by little): at worst a key
    gets twice its limit across a window boundary, which is the price of one round trip per request.
    """
    now = time.time() if now is None else now
    window = int(now // 60)
    counter = f"embedq:rpm:{key_id}:{window}"
    pipe = _client(redis_url).pipeline()
    pipe.incr(counter)
    pipe.expire(counter, 61)
    count, _ = pipe.execute()
    if int(count) <= limit:
        return None
    return max(1, math.ceil((window + 1) * 60 - now))
