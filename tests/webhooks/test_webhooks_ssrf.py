"""The SSRF guard: which addresses a webhook may reach, and the pinned request that reaches them."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

import pytest

from app.webhooks.delivery import pinned_request
from app.webhooks.special_ranges import SPECIAL_IPV4, SPECIAL_IPV6
from app.webhooks.ssrf import UnsafeWebhookUrlError, WebhookHostUnresolvedError, check_address, check_url


def resolver(*addresses: str):
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://172.16.5.4/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://240.0.0.1/hook", "reserved"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://100.64.0.1/hook", "not globally routable"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ],
)
def test_non_public_addresses_are_refused(url: str, why: str) -> None:
    with pytest.raises(UnsafeWebhookUrlError, match=why):
        check_url(url, [])


def test_a_name_resolving_to_any_private_address_is_refused() -> None:
    with pytest.raises(UnsafeWebhookUrlError, match=r"private address 10\.0\.0\.7"):
        check_url("https://hooks.example.com/x", [], resolver("93.184.215.14", "10.0.0.7"), reveal_addresses=True)


def test_what_a_name_resolves_to_is_not_said_unless_asked() -> None:
    """A tenant must not learn what the server's internal names resolve to (``http://vm:18082/``)."""
    with pytest.raises(UnsafeWebhookUrlError) as refused:
        check_url("http://vm:18082/", [], resolver("127.0.0.1"))
    assert "127.0.0.1" not in refused.value.message and "not public" in refused.value.message
    with pytest.raises(UnsafeWebhookUrlError, match=r"loopback address 127\.0\.0\.1"):
        check_url("http://127.0.0.1:18082/", [])  # the caller named the address: nothing to hide


def test_public_addresses_pass_and_the_first_is_the_one_to_connect_to() -> None:
    target = check_url("https://hooks.example.com/x", [], resolver("93.184.215.14", "2606:2800:21f:cb07::1"))
    assert target.address == "93.184.215.14" and target.url.host == "hooks.example.com"


def test_the_allow_list_lets_a_private_range_through() -> None:
    assert check_url("http://127.0.0.1:9/x", ["127.0.0.1/32"]).address == "127.0.0.1"
    assert check_url("http://10.2.3.4/x", ["10.0.0.0/8"]).address == "10.2.3.4"
    with pytest.raises(UnsafeWebhookUrlError):
        check_url("http://127.0.0.2/x", ["127.0.0.1/32"])


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://example.com", "/relative"])
def test_only_absolute_http_and_https_urls(url: str) -> None:
    with pytest.raises(UnsafeWebhookUrlError, match="http"):
        check_url(url, [])


def test_a_host_that_does_not_resolve_is_reported_as_such() -> None:
    def fails(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(WebhookHostUnresolvedError, match="does not resolve"):
        check_url("https://nowhere.invalid/x", [], fails)


def test_the_request_goes_to_the_checked_address_but_names_the_host() -> None:
    target = check_url("https://hooks.example.com:8443/in?a=1", [], resolver("93.184.215.14"))
    request = pinned_request(target, {"webhook-id": "msg_1"}, "{}")
    assert str(request.url) == "https://93.184.215.14:8443/in?a=1"
    assert request.headers["host"] == "hooks.example.com:8443"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    v6 = pinned_request(check_url("http://h.example/x", [], resolver("2606:2800:21f:cb07::1")), {}, "{}")
    assert str(v6.url) == "http://[2606:2800:21f:cb07::1]/x" and v6.headers["host"] == "h.example"


# --- every IANA special-purpose range, and every IPv6 form that wraps an IPv4 address (issue 16) ----------


def _samples(network: IPv4Network | IPv6Network) -> list[str]:
    """The first, a middle and the last address of ``network``."""
    return sorted({str(network[0]), str(network[network.num_addresses // 2]), str(network[-1])})


SPECIAL_SAMPLES = [
    (address, f"{network} {name}") for network, name in (*SPECIAL_IPV4, *SPECIAL_IPV6) for address in _samples(network)
]


@pytest.mark.parametrize(("address", "where"), SPECIAL_SAMPLES, ids=[f"{a} {w}" for a, w in SPECIAL_SAMPLES])
def test_every_address_of_every_special_purpose_range_is_refused(address: str, where: str) -> None:
    assert check_address(address, []) is not None, f"{address} ({where}) passed the guard"
    literal = f"[{address}]" if ":" in address else address
    with pytest.raises(UnsafeWebhookUrlError):
        check_url(f"http://{literal}/hook", [])


@pytest.mark.parametrize(
    ("address", "form", "carried"),
    [
        ("2002:7f00:1::1", "6to4", "loopback address 127.0.0.1"),
        ("2002:a00:1::", "6to4", "private address 10.0.0.1"),
        ("2002:808:808::1", "6to4", "public address 8.8.8.8"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo", "loopback address 127.0.0.1"),
        ("2001:0:a9fe:a9fe::1", "Teredo", "link-local address 169.254.169.254"),
        ("64:ff9b::7f00:1", "NAT64", "loopback address 127.0.0.1"),
        ("64:ff9b::a9fe:a9fe", "NAT64", "link-local address 169.254.169.254"),
        ("64:ff9b::808:808", "NAT64", "public address 8.8.8.8"),
        ("64:ff9b:1:7f00:0:100::", "local-use IPv4-IPv6 translation", "loopback address 127.0.0.1"),
        ("::ffff:127.0.0.1", "IPv4-mapped", "loopback address 127.0.0.1"),
        ("::ffff:8.8.8.8", "IPv4-mapped", "public address 8.8.8.8"),
        ("::127.0.0.1", "IPv4-compatible", "loopback address 127.0.0.1"),
        ("::10.1.2.3", "IPv4-compatible", "private address 10.1.2.3"),
        ("::ffff:0:7f00:1", "IPv4-translated", "loopback address 127.0.0.1"),
    ],
)
def test_ipv6_forms_that_carry_ipv4_are_refused_naming_what_they_carry(address: str, form: str, carried: str) -> None:
    reason = check_address(address, [])
    assert reason is not None and form in reason and carried in reason, reason


@pytest.mark.parametrize("address", ["fec0::1", "fec0:1:2:3::4", "feff:ffff::1"])
def test_site_local_is_refused(address: str) -> None:
    reason = check_address(address, [])
    assert reason is not None and "site-local" in reason


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.215.14", "2606:2800:21f:cb07::1", "2a00:1450:4001:81c::200e"])
def test_public_addresses_still_pass(address: str) -> None:
    assert check_address(address, []) is None


def test_an_allowed_ipv4_range_covers_its_mapped_form_only() -> None:
    assert check_address("::ffff:127.0.0.1", ["127.0.0.0/8"]) is None
    assert check_address("2002:7f00:1::1", ["127.0.0.0/8"]) is not None
    assert check_address("2002:7f00:1::1", ["2002::/16"]) is None
