"""An S3-compatible store (the artifact store, a source's bucket) that does not answer: which errors say so.

botocore already tries each request 3 times and s3fs some errors 5 times, within seconds. An error that
still comes out and says the store did not answer (refused, reset, timed out, 5xx, SlowDown) is an outage
to wait out, not an answer about the request: a job task raises ``StoreUnavailableError`` for it, one of
the ``TRANSIENT_ERRORS`` that Celery retries with backoff (``workers.celery_app.retrying_task``), instead
of failing the inputs it was embedding. Errors that say the request is wrong (no such key, access denied,
a corrupt file) are answers: reading again changes nothing.
"""

from __future__ import annotations

import asyncio
import http.client
import socket

import aiohttp
import botocore.exceptions
import fsspec.exceptions


class StoreUnavailableError(Exception):
    """A store did not answer; the job task that met it runs again later (a transient error)."""


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
    """Return True if ``exc`` (or an error it was raised from) says the store did not answer, not "no".

    A host name that does not resolve is an answer (a typo, a store that is gone), not an outage.
    """
    errors = causes(exc)
    if any(isinstance(e, socket.gaierror) for e in errors):
        return False
    return any(isinstance(e, _OUTAGES) or _busy(e) for e in errors)


def causes(exc: BaseException) -> list[BaseException]:
    """Return ``exc`` and the errors it was raised from or while handling, outermost first (each once)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _busy(exc: BaseException) -> bool:
    """An S3 ClientError or HTTP response whose status is 5xx or 429, or whose code is an S3 "slow down"."""
    if isinstance(exc, aiohttp.ClientResponseError):  # an http(s):// source's answer
        return exc.status >= 500 or exc.status == 429
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return status >= 500 or status == 429 or exc.response.get("Error", {}).get("Code") in _BUSY_CODES


def raise_if_unavailable(exc: BaseException, what: str) -> None:
    """Raise StoreUnavailableError (from ``exc``) if ``exc`` says a store did not answer ``what``; else return."""
    if unavailable(exc):
        raise StoreUnavailableError(f"{what}: the store did not answer ({type(exc).__name__}: {exc})") from exc
