"""The SSRF guard: which addresses a webhook may reach, and the pinned request that reaches them."""

from __future__ import annotations

import pytest

from app.webhooks.delivery import pinned_request
from app.webhooks.ssrf import UnsafeWebhookUrlError, WebhookHostUnresolvedError, check_url


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
        check_url("https://hooks.example.com/x", [], resolver("93.184.215.14", "10.0.0.7"))


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
