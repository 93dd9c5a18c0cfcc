"""Fetching user-supplied URLs: non-public addresses refused at connect time, redirects re-checked,
size cap, deadline. Only loopback and a faked resolver are used: nothing here reaches the internet."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from qwen_image_server.errors import FetchFailed, ResponseTooLarge, UrlNotAllowed
from qwen_image_server.safe_fetch import EVERYWHERE, FetchPolicy, IPNetwork, fetch, post, refusal_reason
from qwen_image_server.settings import Settings
from tests.conftest import picture_bytes
from tests.unit.local_http import query, redirect, send_body, serving

LOOPBACK: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"),)
ONLY_127_0_0_1: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.1/32"),)
PNG = picture_bytes()


def _hops(handler: BaseHTTPRequestHandler) -> None:
    """/hops?n=N redirects N times, then serves the picture."""
    left = int(query(handler, "n"))
    if left == 0:
        send_body(handler, PNG)
    else:
        redirect(handler, f"/hops?n={left - 1}")


def _false_length(handler: BaseHTTPRequestHandler) -> None:
    """Claims 100 bytes, then streams 40 KiB in chunks (chunked framing wins over Content-Length)."""
    handler.send_response(200)
    handler.send_header("Content-Length", "100")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.send_header("Connection", "close")
    handler.end_headers()
    for _ in range(10):
        handler.wfile.write(b"1000\r\n" + b"\0" * 0x1000 + b"\r\n")
    handler.wfile.write(b"0\r\n\r\n")


def _declared_huge(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", str(10**9))
    handler.end_headers()
    handler.wfile.write(b"\0" * 100)


def _trickle(handler: BaseHTTPRequestHandler) -> None:
    """A byte every 50 ms: each read is quick, only a deadline for the whole fetch stops it."""
    handler.send_response(200)
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    for _ in range(1000):
        handler.wfile.write(b"\0")
        handler.wfile.flush()
        time.sleep(0.05)


ROUTES: dict[str, Callable[[BaseHTTPRequestHandler], None]] = {
    "/img.png": lambda handler: send_body(handler, PNG, content_type="text/plain"),
    "/host": lambda handler: send_body(handler, handler.headers["Host"].encode()),
    "/redirect": lambda handler: redirect(handler, query(handler, "to")),
    "/hops": _hops,
    "/false-length": _false_length,
    "/declared-huge": _declared_huge,
    "/trickle": _trickle,
}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serving(ROUTES) as base:
        yield base


@pytest.fixture
def port(server: str) -> int:
    return int(server.rsplit(":", 1)[1])


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: Callable[[str], list[str] | None]) -> list[str]:
    """Resolve the names `answers` knows to its addresses; others as usual. Returns the names asked."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        addresses = answers(str(host))
        if addresses is None:
            return real(host, port, *args, **kwargs)
        asked.append(str(host))
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def policy(allowed: tuple[IPNetwork, ...] = (), **limits: Any) -> FetchPolicy:
    return FetchPolicy(allowed_networks=allowed, **{"deadline_s": 3.0, **limits})


# ----------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/x", "resolves to 127.0.0.1, a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "the cloud metadata address"),
        ("http://[::1]/x", "resolves to ::1, a loopback address"),
        ("http://[::ffff:127.0.0.1]/x", "the IPv4-mapped form of 127.0.0.1, a loopback address"),
        ("http://0.0.0.0/x", "unspecified"),
        ("http://[::]/x", "unspecified"),
        ("http://100.64.0.1/x", "carrier-grade NAT"),
        ("https://10.1.2.3/x", "a private address"),
        ("http://172.16.5.4/x", "a private address"),
        ("http://192.168.0.10:8080/x", "a private address"),
        ("http://169.254.1.1/x", "a link-local address"),
        ("http://[fe80::1]/x", "a link-local address"),
        ("http://[fd12:3456::1]/x", "unique local"),
        ("http://224.0.0.1/x", "a multicast address"),
        ("http://[ff02::1]/x", "a multicast address"),
        ("http://240.0.0.1/x", "a reserved address"),
        ("http://[2002:7f00:1::1]/x", "the 6to4 form of 127.0.0.1"),
        ("http://[64:ff9b::a00:1]/x", "the NAT64 form of 10.0.0.1, a private address"),
        ("http://2130706433/x", "127.0.0.1, a loopback address"),  # 127.0.0.1 as one decimal number
        ("http://localhost:9/x", "a loopback address"),
    ],
)
def test_non_public_addresses_are_refused(url: str, why: str) -> None:
    with pytest.raises(UrlNotAllowed, match="this server does not fetch private addresses") as caught:
        fetch(url, policy())
    assert why in caught.value.message
    assert caught.value.status == 400 and caught.value.code == "url_not_allowed"


@pytest.mark.parametrize("url", ["ftp://images.example/a.png", "file:///etc/passwd", "gopher://images.example/"])
def test_only_http_and_https_are_fetched(url: str) -> None:
    with pytest.raises(UrlNotAllowed, match="only http and https"):
        fetch(url, policy(EVERYWHERE))


def test_a_name_that_resolves_to_a_private_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, lambda host: ["10.0.0.1"] if host == "images.example" else None)
    with pytest.raises(UrlNotAllowed, match=r"images\.example/a\.png resolves to 10\.0\.0\.1, a private address"):
        fetch("https://images.example/a.png", policy())


def test_one_private_answer_among_public_ones_refuses_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    # refused before any connection is tried, so the public address is never contacted
    fake_dns(monkeypatch, lambda host: ["93.184.215.14", "10.0.0.1"] if host == "mixed.example" else None)
    with pytest.raises(UrlNotAllowed, match=r"10\.0\.0\.1"):
        fetch("http://mixed.example/a.png", policy())


def test_a_redirect_to_a_private_address_is_refused(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    # the first hop is allowed (a "public" name on the allow-listed test server); the second is
    # refused by the connect-time check, not by anything that looked at the redirect
    fake_dns(monkeypatch, lambda host: ["127.0.0.1"] if host == "public.example" else None)
    url = f"http://public.example:{port}/redirect?to=http://169.254.169.254/latest/meta-data/"
    with pytest.raises(UrlNotAllowed, match=r"redirected to http://169\.254\.169\.254/.*cloud metadata"):
        fetch(url, policy(ONLY_127_0_0_1))


def test_a_redirect_to_another_scheme_is_refused(server: str) -> None:
    with pytest.raises(UrlNotAllowed, match="only http and https"):
        fetch(f"{server}/redirect?to=file:///etc/passwd", policy(LOOPBACK))


def test_every_connection_checks_the_address_it_uses(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    # DNS rebinding: the name first answers the allowed test server, then a private address. The
    # redirect opens a new connection, which resolves again and is refused.
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])
    asked = fake_dns(monkeypatch, lambda host: next(answers) if host == "rebind.example" else None)
    with pytest.raises(UrlNotAllowed, match=r"resolves to 10\.0\.0\.1"):
        fetch(f"http://rebind.example:{port}/redirect?to=/img.png", policy(ONLY_127_0_0_1))
    assert asked == ["rebind.example", "rebind.example"]


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"],
)
def test_public_addresses_pass(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_teredo_is_refused() -> None:
    reason = refusal_reason(ipaddress.ip_address("2001:0:4136:e378:8000:63bf:3fff:fdd2"))
    assert reason is not None and "Teredo" in reason


# --------------------------------------------------------------------------------- what passes


def test_an_allow_listed_network_is_reachable(server: str) -> None:
    assert fetch(f"{server}/img.png", policy(LOOPBACK)) == PNG  # its text/plain Content-Type is ignored


def test_the_host_name_is_kept_when_connecting_to_the_checked_address(
    monkeypatch: pytest.MonkeyPatch, port: int
) -> None:
    fake_dns(monkeypatch, lambda host: ["127.0.0.1"] if host == "images.example" else None)
    assert fetch(f"http://images.example:{port}/host", policy(LOOPBACK)) == f"images.example:{port}".encode()


def test_redirects_are_followed_up_to_the_limit(server: str) -> None:
    assert fetch(f"{server}/hops?n=5", policy(LOOPBACK)) == PNG
    with pytest.raises(FetchFailed, match="redirected more than 5 times"):
        fetch(f"{server}/hops?n=6", policy(LOOPBACK))


def test_an_error_status_is_reported(server: str) -> None:
    with pytest.raises(FetchFailed, match="answered HTTP 404"):
        fetch(f"{server}/nothing", policy(LOOPBACK))


# -------------------------------------------------------------------------------------- limits


def test_a_body_over_the_cap_is_cut_off_whatever_content_length_says(server: str) -> None:
    with pytest.raises(ResponseTooLarge, match="larger than 10000 bytes"):
        fetch(f"{server}/false-length", policy(LOOPBACK, max_bytes=10_000))


def test_a_declared_length_over_the_cap_is_refused_unread(server: str) -> None:
    with pytest.raises(ResponseTooLarge):
        fetch(f"{server}/declared-huge", policy(LOOPBACK, max_bytes=10_000))


def test_a_slow_server_hits_the_deadline_for_the_whole_fetch(server: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="did not finish within 1 s"):
        fetch(f"{server}/trickle", policy(LOOPBACK, deadline_s=1.0))
    assert time.monotonic() - started < 2.0


def test_a_slow_name_lookup_hits_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(host: str) -> list[str] | None:
        if host != "slow.example":
            return None
        time.sleep(1.5)
        return ["127.0.0.1"]

    fake_dns(monkeypatch, slow)
    started = time.monotonic()
    with pytest.raises(FetchFailed, match=r"did not finish within 0\.3 s"):
        fetch("http://slow.example/a.png", policy(LOOPBACK, deadline_s=0.3))
    assert time.monotonic() - started < 1.0


def test_the_allow_list_setting_reads_comma_separated_networks(clean_env: None) -> None:
    settings = Settings(allowed_fetch_networks="127.0.0.0/8, fd00::/8,10.1.2.3")
    assert [str(net) for net in settings.allowed_fetch_networks] == ["127.0.0.0/8", "fd00::/8", "10.1.2.3/32"]
    assert Settings().allowed_fetch_networks == ()
    with pytest.raises(ValueError, match="allowed_fetch_networks"):
        Settings(allowed_fetch_networks="10.0.0.1/8")


# ------------------------------------------------------------------------------ post (callbacks)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{port}/host", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[::1]:{port}/host", "loopback"),
        ("http://[::ffff:127.0.0.1]:{port}/host", "IPv4-mapped form of 127.0.0.1"),
        ("http://0.0.0.0:{port}/host", "0.0.0.0/8"),
        ("http://hooks.example:{port}/host", "private"),
    ],
)
def test_posts_to_non_public_addresses_are_refused(
    monkeypatch: pytest.MonkeyPatch, port: int, url: str, reason: str
) -> None:
    fake_dns(monkeypatch, lambda host: ["10.0.0.1"] if host == "hooks.example" else None)
    with pytest.raises(UrlNotAllowed, match=reason):
        post(url.format(port=port), b"{}", {}, policy())


def test_a_post_answered_with_a_redirect_is_not_followed(server: str) -> None:
    answer = post(f"{server}/redirect?to=http://169.254.169.254/", b"{}", {}, policy(LOOPBACK))
    assert (answer.status_code, answer.location) == (302, "http://169.254.169.254/")


def test_a_post_reaches_an_allow_listed_receiver(server: str) -> None:
    answer = post(f"{server}/host", b"{}", {"Content-Type": "application/json"}, policy(LOOPBACK))
    assert answer.status_code == 200 and answer.location is None
