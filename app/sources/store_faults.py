"""A source store that does not answer: which of its errors are outages to wait out, and how long to wait.

botocore already tries each request 3 times and s3fs some errors 5 times, within seconds. An outage longer
than that (a gateway restarting, a network partition, a store throttling a fleet's reads) used to end the
read: a shard recorded its documents as failed, a plan failed its job. Such an error now sends the task back
to its queue to read again after EMBEDQ_SOURCE_RETRY_DELAY_S, doubling each time, up to
EMBEDQ_SOURCE_SHARD_MAX_ATTEMPTS reads; only the last one's error is recorded. Errors that say the request
itself is wrong (no such key, access denied, a truncated file) are recorded at once: reading again changes
nothing.
"""

from __future__ import annotations

import asyncio
import http.client

import aiohttp
import botocore.exceptions
import fsspec.exceptions

from app.core.config import Settings

_OUTAGES: tuple[type[BaseException], ...] = (
    botocore.exceptions.ConnectionError,  # refused, unreachable endpoint, connect timeout
    botocore.exceptions.HTTPClientError,  # closed mid-response, read timeout
    aiohttp.ClientConnectionError,  # refused, reset, server disconnected
    aiohttp.ClientPayloadError,  # a body cut short
    fsspec.exceptions.FSTimeoutError,
    asyncio.TimeoutError,
    ConnectionError,  # the builtin one: refused, reset, aborted
    http.client.IncompleteRead,
)
# S3 error codes that mean "not now", whatever the HTTP status the store chose for them.
_BUSY_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable",
                         "InternalError", "RequestLimitExceeded"})  # fmt: skip


def unavailable(exc: BaseException) -> bool:
    """Return True if ``exc`` (or an error it was raised from) says the store did not answer, not "no"."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _OUTAGES) or _busy(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _busy(exc: BaseException) -> bool:
    """A ClientError whose status is 5xx or 429, or whose code is one of S3's "slow down" answers."""
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return status >= 500 or status == 429 or exc.response.get("Error", {}).get("Code") in _BUSY_CODES


def retry_delay_s(attempt: int, settings: Settings) -> float:
    """Return how long to wait after read ``attempt`` (1: the first) met an outage: doubling, at most 10 minutes."""
    return min(settings.source_retry_delay_s * 2 ** (attempt - 1), 600.0)


class StoreOutageError(Exception):
    """A read the store did not answer; the task sends itself back to read again in ``retry_in_s`` seconds."""

    def __init__(self, message: str, retry_in_s: float) -> None:
        super().__init__(message)
        self.retry_in_s = retry_in_s
