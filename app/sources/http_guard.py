"""An http(s):// source may only reach public addresses, or ranges the operator allowed.

A tenant names the URL and the workers fetch it, so without a guard a source could read the cloud's
metadata service (169.254.169.254), the cluster's internal services or the worker's own loopback. Every
connection the source's client makes is checked, redirects included, where its host (a name or an address
literal) becomes the addresses it connects to: the connection goes to an address that was checked, so a
DNS answer that changes in between cannot steer it. The rules are the webhooks' (``app.webhooks.ssrf``);
the allowed ranges are EMBEDQ_SOURCE_HTTP_ALLOWED_CIDRS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp.abc import ResolveResult

from app.webhooks.ssrf import check_address


class AddressRefusedError(Exception):
    """A source URL (or a redirect) leads to an address sources may not reach; not an outage: never retried."""


def _refuse(host: str, address: str, allowed_cidrs: Sequence[str]) -> None:
    reason = check_address(address, allowed_cidrs)
    if reason is not None:
        where = "the URL's host is a" if host.strip("[]") == address else f"{host} resolves to a"
        raise AddressRefusedError(
            f"{where} {reason}: http(s) sources may only read public addresses, or ranges the operator "
            "allows in EMBEDQ_SOURCE_HTTP_ALLOWED_CIDRS"
        )


class _CheckedConnector(aiohttp.TCPConnector):
    """aiohttp's connector, refusing to connect to an address not allowed: the first request's and every redirect's.

    ``_resolve_host`` is where aiohttp turns a host (a name, or an address literal) into the addresses it then
    connects to; every answer is checked there, so the connection goes to an address that was checked.
    """

    def __init__(self, allowed_cidrs: Sequence[str]) -> None:
        super().__init__(use_dns_cache=False)
        self._allowed = tuple(allowed_cidrs)

    async def _resolve_host(self, host: str, port: int, traces: Any = None) -> list[ResolveResult]:
        answers = await super()._resolve_host(host, port, traces=traces)
        for answer in answers:  # every address, not one: a mixed answer could steer a later connection
            _refuse(host, answer["host"], self._allowed)
        return answers


def client_factory(allowed_cidrs: Sequence[str]) -> Any:
    """Return the ``get_client`` for fsspec's HTTPFileSystem: an aiohttp session whose every connection is checked."""

    async def get_client(**kwargs: Any) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=_CheckedConnector(allowed_cidrs), **kwargs)

    return get_client
