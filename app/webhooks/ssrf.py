"""The SSRF guard: a webhook may only reach public addresses, or ranges the operator allowed.

The host is resolved when an endpoint is created and again before every attempt; the attempt then
connects to the address that was checked (see ``delivery.pinned_request``), so a DNS answer that
changes between the check and the connection cannot point the request at an internal service.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import httpx

from app.core.errors import InvalidRequestError

IPAddress = IPv4Address | IPv6Address
Resolver = Callable[[str, int], list[str]]
"""(host, port) -> the addresses it resolves to."""

_SCHEMES = {"http": 80, "https": 443}


class UnsafeWebhookUrlError(InvalidRequestError):
    """The URL is not http(s), or its host resolves to an address webhooks may not reach."""

    code = "unsafe_webhook_url"


class WebhookHostUnresolvedError(InvalidRequestError):
    """The host does not resolve right now (which may change: at send time this is retried)."""

    code = "webhook_host_unresolved"


@dataclass(frozen=True)
class CheckedTarget:
    """A webhook URL whose every address passed the guard, and the address to connect to."""

    url: httpx.URL
    address: str


def resolve_host(host: str, port: int) -> list[str]:
    """Return the distinct addresses ``host`` resolves to, in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _refusal(address: IPAddress) -> str | None:
    """Return why ``address`` is not a public unicast address, or None when it is."""
    for reason, flag in (
        # Most specific first: Python counts loopback, link-local and more as "private" too.
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    ):
        if flag:
            return reason
    if not address.is_global:
        return "not globally routable"
    return None


def _allowed(address: IPAddress, allowed_cidrs: Sequence[str]) -> bool:
    return any(address in ip_network(cidr, strict=False) for cidr in allowed_cidrs)


def check_address(address: str, allowed_cidrs: Sequence[str]) -> str | None:
    """Return why webhooks may not reach ``address``, or None when they may."""
    ip = ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if _allowed(ip, allowed_cidrs):
        return None
    reason = _refusal(ip)
    return f"{reason} address {ip}" if reason else None


def check_url(url: str, allowed_cidrs: Sequence[str], resolve: Resolver = resolve_host) -> CheckedTarget:
    """Return the URL and the address to connect to, or raise if any address of its host is refused.

    Every address must pass, not just one: a host answering with a public and a private address could
    otherwise steer a later connection to the private one.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsafeWebhookUrlError(f"webhook URL {url!r} is not a valid URL: {exc}", param="url") from exc
    if parsed.scheme not in _SCHEMES or not parsed.host:
        raise UnsafeWebhookUrlError(
            f"webhook URL {url!r} must be an absolute http:// or https:// URL", param="url", url=url
        )
    port = parsed.port or _SCHEMES[parsed.scheme]
    try:
        addresses = [str(ip_address(parsed.host))]
    except ValueError:
        try:
            addresses = resolve(parsed.host, port)
        except (OSError, UnicodeError) as exc:
            raise WebhookHostUnresolvedError(
                f"webhook host {parsed.host!r} does not resolve ({exc}): check the URL", param="url", url=url
            ) from exc
    if not addresses:
        raise WebhookHostUnresolvedError(f"webhook host {parsed.host!r} has no address", param="url", url=url)
    for address in addresses:
        reason = check_address(address, allowed_cidrs)
        if reason is not None:
            raise UnsafeWebhookUrlError(
                f"webhook URL {url!r} resolves to a {reason}, which webhooks may not reach: use a public "
                "address, or let the operator allow its range in EMBEDQ_WEBHOOK_ALLOWED_CIDRS",
                param="url",
                url=url,
            )
    return CheckedTarget(url=parsed, address=addresses[0])
