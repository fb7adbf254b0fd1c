"""IANA's special-purpose address registries, and the IPv4 address an IPv6 one carries inside it.

Python's ``is_global``/``is_private`` miss ranges (6to4 2002::/16, site-local fec0::/10, the newer IANA
entries) and never look at an IPv4 address wrapped in an IPv6 one: a webhook to ``2002:7f00:1::1`` reaches
127.0.0.1 through any 6to4 relay. The tables below are the IPv4 and IPv6 Special-Purpose Address Registries
(iana.org/assignments/iana-ipv4-special-registry, iana-ipv6-special-registry) plus the deprecated forms
that still embed IPv4 (IPv4-compatible ::/96, SIIT ::ffff:0:0:0/96) and site-local fec0::/10. Every range
is refused, including the few the registry marks globally reachable (anycast relays): a webhook has no
business there.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

IPAddress = IPv4Address | IPv6Address

SPECIAL_IPV4: tuple[tuple[IPv4Network, str], ...] = tuple(
    (ip_network(cidr), name)  # type: ignore[misc]
    for cidr, name in (
        ("0.0.0.0/8", "'this network'"),
        ("10.0.0.0/8", "private-use"),
        ("100.64.0.0/10", "shared address space (carrier-grade NAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private-use"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation (TEST-NET-1)"),
        ("192.31.196.0/24", "AS112-v4"),
        ("192.52.193.0/24", "AMT"),
        ("192.88.99.0/24", "deprecated 6to4 relay anycast"),
        ("192.168.0.0/16", "private-use"),
        ("192.175.48.0/24", "direct delegation AS112 service"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation (TEST-NET-2)"),
        ("203.0.113.0/24", "documentation (TEST-NET-3)"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("255.255.255.255/32", "limited broadcast"),
    )
)

SPECIAL_IPV6: tuple[tuple[IPv6Network, str], ...] = tuple(
    (ip_network(cidr), name)  # type: ignore[misc]
    for cidr, name in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::ffff:0:0/96", "IPv4-mapped"),
        ("::ffff:0:0:0/96", "IPv4-translated (SIIT)"),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("64:ff9b::/96", "NAT64 (IPv4-IPv6 translation)"),
        ("64:ff9b:1::/48", "local-use IPv4-IPv6 translation"),
        ("::/8", "reserved by IETF"),
        ("100::/64", "discard-only"),
        ("100:0:0:1::/64", "dummy IPv6 prefix"),
        ("2001::/32", "Teredo"),
        ("2001::/23", "IETF protocol assignments"),
        ("2001:db8::/32", "documentation"),
        ("2002::/16", "6to4"),
        ("2620:4f:8000::/48", "direct delegation AS112 service"),
        ("3fff::/20", "documentation"),
        ("5f00::/16", "segment routing (SRv6) SIDs"),
        ("fc00::/7", "unique-local"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
    )
)

_LOW_32 = 0xFFFF_FFFF


def special_range(ip: IPAddress) -> tuple[str, str] | None:
    """Return (name, CIDR) of the special-purpose range holding ``ip`` (the tables list the most specific first)."""
    table = SPECIAL_IPV4 if isinstance(ip, IPv4Address) else SPECIAL_IPV6
    for network, name in table:
        if ip in network:
            return name, str(network)
    return None


def embedded_ipv4(ip: IPv6Address) -> list[IPv4Address]:
    """Return the IPv4 addresses an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo), if any."""
    value = int(ip)
    if ip in ip_network("::/96") and value > 1:
        return [IPv4Address(value & _LOW_32)]
    for prefix in ("::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96"):
        if ip in ip_network(prefix):
            return [IPv4Address(value & _LOW_32)]
    if ip in ip_network("64:ff9b:1::/48"):
        # RFC 6052 with a /48 prefix: 16 bits of the IPv4 address, the zero "u" octet, then the other 16.
        return [IPv4Address(((value >> 64) & 0xFFFF) << 16 | ((value >> 40) & 0xFFFF))]
    if ip in ip_network("2002::/16"):
        return [IPv4Address((value >> 80) & _LOW_32)]
    if ip in ip_network("2001::/32"):
        # Teredo: the server's address in bits 32-63, the client's (inverted) in the last 32.
        return [IPv4Address((value >> 64) & _LOW_32), IPv4Address(~value & _LOW_32)]
    return []
