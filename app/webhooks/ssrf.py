"""The SSRF guard: a webhook may only reach public addresses, or ranges the operator allowed.

Public means outside every IANA special-purpose range and, for an IPv6 address that wraps an IPv4 one
(6to4, Teredo, NAT64, mapped, compatible), outside them on both counts (``special_ranges.py``).

The host is resolved when an endpoint is created and again before every attempt; the attempt then
connects to the address that was checked (see ``delivery.pinned_request``), so a DNS answer that
changes between the check and the connection cannot point the request at an internal service.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import httpx

from app.core.errors import InvalidRequestError
from app.webhooks.special_ranges import embedded_ipv4, special_range

log = logging.getLogger(__name__)

IPAddress = IPv4Address | IPv6Address
Resolver = Callable[[str, int], list[str]]
"""(host, port) -> the addresses it resolves to."""

_SCHEMES = {"http": 80, "https": 443}


def loggable_url(url: str) -> str:
    """Return ``url`` fit for a log line: without its user:password and with its query's values hidden (a
    receiver's URL often carries a token there); the tenant's own views show it whole."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "<an invalid URL>"
    query = "&".join(f"{key}=***" for key in dict.fromkeys(parsed.params.keys()))
    return str(parsed.copy_with(username=None, password=None, query=query.encode() or None))


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
    """Return why ``address`` is not a public unicast address (what it is, and what it wraps), or None."""
    if isinstance(address, IPv6Address):
        wrapped = embedded_ipv4(address)
        if wrapped:
            name, cidr = special_range(address) or ("IPv4-embedding", "")
            inner = "; ".join(_refusal(v4) or f"public address {v4}" for v4 in wrapped)
            return f"{name} address {address} ({cidr}), which carries the IPv4 {inner}"
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
            return f"{reason} address {address}"
    special = special_range(address)
    if special is not None:
        return f"not globally routable address {address} ({special[0]}, {special[1]}: IANA special-purpose)"
    if not address.is_global:
        return f"not globally routable address {address}"
    return None


def _allowed(address: IPAddress, allowed_cidrs: Sequence[str]) -> bool:
    return any(address in ip_network(cidr, strict=False) for cidr in allowed_cidrs)


def check_address(address: str, allowed_cidrs: Sequence[str]) -> str | None:
    """Return why webhooks may not reach ``address``, or None when they may."""
    ip = ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    # An allowed IPv4 range covers its IPv4-mapped form; any other IPv6 wrapping of IPv4 is refused.
    mapped = ip.ipv4_mapped if isinstance(ip, IPv6Address) else None
    if _allowed(ip, allowed_cidrs) or (mapped is not None and _allowed(mapped, allowed_cidrs)):
        return None
    return _refusal(ip)


def check_url(
    url: str, allowed_cidrs: Sequence[str], resolve: Resolver = resolve_host, *, reveal_addresses: bool = False
) -> CheckedTarget:
    """Return the URL and the address to connect to, or raise if any address of its host is refused.

    Every address must pass, not just one: a host answering with a public and a private address could
    otherwise steer a later connection to the private one. What a host NAME resolves to is said only when
    ``reveal_addresses`` (an admin's request): else a tenant could map the names of the server's network
    (``http://db:5432/`` resolves to a private address); the server's log has it.
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
    literal = True  # the URL names an address: saying what it is tells the caller nothing new
    try:
        addresses = [str(ip_address(parsed.host))]
    except ValueError:
        literal = False
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
        if reason is None:
            continue
        if not (literal or reveal_addresses):
            log.info("refused webhook URL %r: its host resolves to a %s", loggable_url(url), reason)
            reason = "address that is not public (loopback, private or another special-purpose range)"
        raise UnsafeWebhookUrlError(
            f"webhook URL {url!r} resolves to a {reason}, which webhooks may not reach: use a public "
            "address, or let the operator allow its range in EMBEDQ_WEBHOOK_ALLOWED_CIDRS",
            param="url",
            url=url,
        )
    return CheckedTarget(url=parsed, address=addresses[0])
