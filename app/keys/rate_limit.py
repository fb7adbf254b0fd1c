"""Requests per minute per key, counted in Redis so the limit holds across every API process."""

from __future__ import annotations

import math
import os
import uuid

import redis

WINDOW_MS = 60_000

# A sliding log: the key's admitted requests in the last minute, scored by their time in ms. A request is
# admitted (and logged) while fewer than the limit are in the window; a refused one is not logged, so a
# client that keeps retrying is let in as soon as the oldest request leaves. Returns -1 when admitted, else
# the ms until the oldest logged request leaves the window. The time is Redis's own unless the caller gives
# one, so API hosts whose clocks differ count alike.
_SLIDING_LOG = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], window)
  return -1
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tonumber(oldest[2]) + window - now
"""

_scripts: dict[tuple[int, str], redis.commands.core.Script] = {}


def _script(redis_url: str) -> redis.commands.core.Script:
    # One pool per process and URL; a forked API worker builds its own.
    key = (os.getpid(), redis_url)
    script = _scripts.get(key)
    if script is None:
        client = redis.Redis.from_url(redis_url, socket_timeout=2.0)
        script = _scripts[key] = client.register_script(_SLIDING_LOG)
    return script


def rate_limit_key(key_id: str) -> str:
    """Return the Redis key of ``key_id``'s log of requests."""
    return f"embedq:rpm:{key_id}"


def hit_rate_limit(redis_url: str, key_id: str, limit: int, *, now: float | None = None) -> int | None:
    """Count one request of ``key_id``; return None if fewer than ``limit`` came in the last 60 s, else the
    seconds until one of them is a minute old (at least 1).

    One round trip (a Lua script); ``now`` (seconds) replaces Redis's clock, for tests.
    """
    now_ms = "" if now is None else str(round(now * 1000))
    member = uuid.uuid4().hex
    wait_ms = int(_script(redis_url)(keys=[rate_limit_key(key_id)], args=[now_ms, WINDOW_MS, limit, member]))
    if wait_ms < 0:
        return None
    return max(1, math.ceil(wait_ms / 1000))
