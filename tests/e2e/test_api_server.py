"""`embedq api` against slow clients: a dripped request head, a stalled body, too many connections.

The API runs as deployments run it (`embedq api`: uvicorn with app/core/http_protocol.py), with short
deadlines so the tests are quick; each test also checks the connection is NOT closed before its deadline.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from support.processes import ManagedProcess, start_api
from support.waiting import wait_until

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT_S = 2.0
BODY_IDLE_TIMEOUT_S = 2.0
LIMIT = 3


@pytest.fixture(scope="module")
def slow_client_api(service_env: dict[str, str]) -> Iterator[ManagedProcess]:
    process = start_api(
        {
            **service_env,
            "EMBEDQ_API_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "EMBEDQ_API_BODY_IDLE_TIMEOUT_S": str(BODY_IDLE_TIMEOUT_S),
            "EMBEDQ_API_LIMIT_CONCURRENCY": str(LIMIT),
        }
    )
    yield process
    process.stop()


def _connect(api: ManagedProcess) -> socket.socket:
    host, port = api.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.settimeout(0.2)
    return sock


def _closed(sock: socket.socket) -> bool:
    """Return True once the server has closed the connection (a read gives EOF or a reset)."""
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def drip_until_closed(sock: socket.socket, chunks: list[bytes], every_s: float, limit_s: float) -> float:
    """Send one chunk every ``every_s`` until the server closes; return how long that took."""
    started = time.monotonic()
    for chunk in chunks:
        if time.monotonic() - started > limit_s:
            break
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
        deadline = time.monotonic() + every_s
        while time.monotonic() < deadline:
            if _closed(sock):
                return time.monotonic() - started
    return float("inf")


def test_a_dripped_request_head_is_cut_at_the_header_deadline(slow_client_api: ManagedProcess) -> None:
    sock = _connect(slow_client_api)
    try:
        head = [b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n"] + [f"X-Drip-{i}: y\r\n".encode() for i in range(100)]
        took = drip_until_closed(sock, head, every_s=0.4, limit_s=HEADER_TIMEOUT_S * 4)
    finally:
        sock.close()
    assert HEADER_TIMEOUT_S * 0.9 <= took <= HEADER_TIMEOUT_S + 2.0, took


def test_a_stalled_body_is_cut_but_a_slow_steady_one_is_not(slow_client_api: ManagedProcess) -> None:
    head = b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    sock = _connect(slow_client_api)
    try:
        sock.sendall(head + b'{"inputs": "')
        started = time.monotonic()
        while not _closed(sock) and time.monotonic() - started < BODY_IDLE_TIMEOUT_S * 4:
            pass
        stalled_for = time.monotonic() - started
    finally:
        sock.close()
    assert BODY_IDLE_TIMEOUT_S * 0.9 <= stalled_for <= BODY_IDLE_TIMEOUT_S + 2.0, stalled_for

    # A body that keeps coming, a byte at a time, outlives both deadlines.
    sock = _connect(slow_client_api)
    try:
        sock.sendall(head)
        took = drip_until_closed(sock, [b"x"] * 10, every_s=BODY_IDLE_TIMEOUT_S / 3, limit_s=60)
    finally:
        sock.close()
    assert took == float("inf"), f"a steady body was cut after {took:.1f} s"


def test_connections_past_the_limit_get_503(slow_client_api: ManagedProcess) -> None:
    idle = [_connect(slow_client_api) for _ in range(LIMIT)]
    try:
        time.sleep(0.3)
        response = httpx.get(f"{slow_client_api.base_url}/healthz", timeout=5)
        assert response.status_code == 503, response.text
    finally:
        for sock in idle:
            sock.close()
    wait_until(
        lambda: httpx.get(f"{slow_client_api.base_url}/healthz", timeout=5).status_code == 200,
        5,
        "the API did not recover once the idle connections closed",
    )


def _raw_response(api: ManagedProcess, request: bytes) -> tuple[bytes, bytes]:
    """Send ``request`` as bytes and return the answer's head and body (the server closes after a 400)."""
    sock = _connect(api)
    sock.settimeout(10)
    try:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    finally:
        sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (b"GET /jobs HTTP/1.1\r\nHost: x\r\ncontent-length;\r\n\r\n", "header"),  # an empty header name
        (b"GET /jobs HTTP/1.1\r\nHost: x\r\nX-A: b\x01c\r\n\r\n", "header"),  # a control character
        (b"GET /v1/models HTTP/1.1\r\nHost: x\r\n: v\r\n\r\n", "header"),  # OpenAI's shape under /v1
    ],
)
def test_an_unparsable_request_is_a_json_400_that_says_why(
    slow_client_api: ManagedProcess, request_bytes: bytes, reason: str
) -> None:
    head, body = _raw_response(slow_client_api, request_bytes)
    assert head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head.lower(), head
    parsed = json.loads(body)
    error = parsed["error"] if request_bytes.startswith(b"GET /v1/") else parsed
    message = error["message"] if "error" in parsed else error["detail"]
    assert error["code"] == "invalid_http" and "could not be parsed: " in message and reason in message.lower()
    assert httpx.get(f"{slow_client_api.base_url}/healthz", timeout=5).status_code == 200
