"""A source store that does not answer (``app.core.store_outages``): how long to wait, and how often.

An outage longer than the client's own retries (a gateway restarting, a network partition, a store
throttling a fleet's reads) used to end the read: a shard recorded its documents as failed, a plan failed
its job. Such an error now sends the task back to its queue to read again after
EMBEDQ_SOURCE_RETRY_DELAY_S, doubling each time, up to EMBEDQ_SOURCE_SHARD_MAX_ATTEMPTS reads (counted on
the shard's row, so a shard's bound holds across workers); only the last one's error is recorded. Errors
that say the request itself is wrong (no such key, access denied, a truncated file) are recorded at once.
"""

from __future__ import annotations

from app.core.config import Settings


def retry_delay_s(attempt: int, settings: Settings) -> float:
    """Return how long to wait after read ``attempt`` (1: the first) met an outage: doubling, at most 10 minutes."""
    return min(settings.source_retry_delay_s * 2 ** (attempt - 1), 600.0)


class StoreOutageError(Exception):
    """A read the store did not answer; the task sends itself back to read again in ``retry_in_s`` seconds."""

    def __init__(self, message: str, retry_in_s: float) -> None:
        super().__init__(message)
        self.retry_in_s = retry_in_s
