"""Fetching URLs that users give us without letting them reach this machine or its private network.

A URL in a request (an input image; later a callback) makes the server open a connection on the
caller's behalf, so a caller could point it at `http://127.0.0.1:6379/`, at the cloud metadata
service or at anything else inside the deployment's network (server-side request forgery). Here:

- Only http and https; every redirect is followed by hand (at most `max_redirects`) and re-checked.
- The address is checked AT CONNECT TIME. We give httpcore our own network backend: its
  `connect_tcp` receives the host name, resolves it once, refuses the connection if any resolved
  address is not public (unless allow-listed), and then connects to exactly the addresses it
  checked. There is no earlier, separate lookup whose answer DNS rebinding could change before the
  connect, and no proxy in between (`trust_env=False`). The URL is untouched, so the Host header is
  the name and httpcore starts TLS with the name as SNI and verifies the certificate against it.
- One deadline for the whole fetch: every DNS lookup, connect, TLS handshake, read and write gets
  only what is left of it, so a server that trickles a byte a second cannot hold a worker thread.
- The body is counted while it streams and cut off past the cap; Content-Length is not trusted.
- What the bytes are (an image or not) is for the caller to decide from the content, never from
  the Content-Type header.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import socket
import ssl
import threading
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import httpcore
import httpx

from qwen_image_server.errors import FetchFailed, ResponseTooLarge, UrlNotAllowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Allow-listing every address turns the address check off (the CLI, run by the machine's own user).
EVERYWHERE: tuple[IPNetwork, ...] = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
USER_AGENT = "qwen-image-server"
REFUSAL = "this server does not fetch private addresses"

_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # 0.0.0.0 reaches this host on Linux
_CGNAT = ipaddress.ip_network("100.64.0.0/10")  # neither private nor global to `ipaddress`
_RFC1918 = tuple(ipaddress.ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
_METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_ULA = ipaddress.ip_network("fc00::/7")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: where the IPv4 sits is not fixed


@dataclass(frozen=True)
class FetchPolicy:
    """What one fetch may do. `allowed_networks` may be reached even though they are not public."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    max_bytes: int = 20 * 2**20
    deadline_s: float = 20.0
    max_redirects: int = 5


class AddressRefused(UrlNotAllowed):
    """Raised by the connect-time check; `fetch` re-raises it as a `UrlNotAllowed` naming the URL."""

    def __init__(self, host: str, address: IPAddress, reason: str) -> None:
        super().__init__(f"{host} resolves to {address}, {reason}; {REFUSAL}")
        self.address = address
        self.reason = reason


# ---------------------------------------------------------------------------------------- addresses


def refusal_reason(address: IPAddress) -> str | None:
    """Why `address` is not a public unicast address (e.g. "a loopback address"), or None if it is."""
    if isinstance(address, ipaddress.IPv6Address):
        return _ipv6_reason(address)
    return _ipv4_reason(address)


def _ipv4_reason(address: ipaddress.IPv4Address) -> str | None:
    checks = (
        (address in _THIS_NETWORK, "an unspecified ('this network', 0.0.0.0/8) address"),
        (address.is_loopback, "a loopback address"),
        (address in _METADATA, "the cloud metadata address (link-local)"),
        (address.is_link_local, "a link-local address"),
        (address in _CGNAT, "a shared (carrier-grade NAT, 100.64.0.0/10) address"),
        (any(address in net for net in _RFC1918), "a private address"),
        (address.is_multicast, "a multicast address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "a special-purpose address that is not publicly routable"),
    )
    return next((reason for failed, reason in checks if failed), None)


def _ipv6_reason(address: ipaddress.IPv6Address) -> str | None:
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        form, ipv4 = embedded
        reason = _ipv4_reason(ipv4)
        if reason is not None:
            return f"the {form} form of {ipv4}, {reason}"
        if form in ("IPv4-mapped", "NAT64"):
            return None  # the packets go to that public IPv4 address (NAT64: IPv6-only networks)
    checks = (
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address in _METADATA, "the cloud metadata address"),
        (address.is_link_local, "a link-local address"),
        (address.is_site_local, "a (deprecated) site-local address"),
        (address in _NAT64_LOCAL, "a local-use NAT64 address"),
        (address in _ULA, "a private (unique local) address"),
        (address.is_multicast, "a multicast address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "a special-purpose address that is not publicly routable"),
    )
    return next((reason for failed, reason in checks if failed), None)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """(form, IPv4 address) for the IPv6 forms that carry an IPv4 address which the packets may reach."""
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    if address.teredo is not None:  # (server, client); Teredo is refused below in any case
        return "Teredo", address.teredo[1]
    return None


def _allow_listed(address: IPAddress, allowed: Sequence[IPNetwork]) -> bool:
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)  # allow-listing 127.0.0.0/8 covers ::ffff:127.0.0.1
    return any(candidate in network for candidate in candidates for network in allowed)


# ------------------------------------------------------------------------------- connect-time check


class Deadline:
    """One clock for a whole fetch; each network operation gets what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        return self._end - time.monotonic()

    @property
    def passed(self) -> bool:
        return self.left() <= 0

    def clamp(self, timeout: float | None) -> float:
        left = self.left()
        if left <= 0:
            raise httpcore.TimeoutException(f"the {self.seconds:g} s deadline passed")
        return left if timeout is None else min(timeout, left)


def _resolve(host: str, port: int, deadline: Deadline) -> list[IPAddress]:
    """The addresses of `host`, in the resolver's order. getaddrinfo has no timeout of its own, so a
    name is looked up in a daemon thread that we stop waiting for at the deadline."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    lookup: concurrent.futures.Future[list[IPAddress]] = concurrent.futures.Future()

    def run() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            lookup.set_result(list(dict.fromkeys(ipaddress.ip_address(str(info[4][0])) for info in infos)))
        except (OSError, ValueError) as exc:
            lookup.set_exception(exc)

    threading.Thread(target=run, name=f"resolve {host}", daemon=True).start()
    try:
        return lookup.result(timeout=max(deadline.left(), 0.0))
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"looking up {host} took longer than the deadline") from None
    except (OSError, ValueError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {host} ({exc})") from None


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, with the address check between the lookup and the connect."""

    def __init__(self, allowed: Sequence[IPNetwork], deadline: Deadline) -> None:
        self._inner = httpcore.SyncBackend()
        self._allowed = tuple(allowed)
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = _resolve(host, port, self._deadline)
        for address in addresses:  # all of them: a name with one bad address is refused whole
            reason = None if _allow_listed(address, self._allowed) else refusal_reason(address)
            if reason is not None:
                raise AddressRefused(host, address, reason)
        failure: Exception = httpcore.ConnectError(f"{host} has no address")
        for address in addresses:
            try:  # an IP literal: SyncBackend's socket.create_connection does no lookup of its own
                stream = self._inner.connect_tcp(
                    str(address), port, self._deadline.clamp(timeout), local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        raise failure

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    """A connected socket whose every operation is bounded by the fetch's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.clamp(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.clamp(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        # httpcore passes the URL's host name here (not the IP we connected to): SNI and the
        # certificate check are those of the name.
        tls = self._inner.start_tls(ssl_context, server_hostname, self._deadline.clamp(timeout))
        return _DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _GuardedTransport(httpx.BaseTransport):
    """httpx's HTTPTransport offers no way to pass a network backend to its connection pool, so this
    is the part of it we need: httpx request -> httpcore pool (with our backend) -> httpx response."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(), network_backend=backend)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = httpcore.URL(
            scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port, target=request.url.raw_path
        )
        core = httpcore.Request(
            request.method, url, headers=request.headers.raw, content=request.stream, extensions=request.extensions
        )
        with _as_httpx_errors(request):
            answer = self._pool.handle_request(core)
        body = typing.cast(Iterable[bytes], answer.stream)
        return httpx.Response(
            answer.status, headers=answer.headers, stream=_Body(body, request), extensions=answer.extensions
        )

    def close(self) -> None:
        self._pool.close()


class _Body(httpx.SyncByteStream):
    def __init__(self, inner: Iterable[bytes], request: httpx.Request) -> None:
        self._inner = inner
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors(self._request):
            yield from self._inner

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()


@contextmanager
def _as_httpx_errors(request: httpx.Request) -> Iterator[None]:
    """httpcore's exceptions as httpx's, so that a guarded client fails like any httpx client."""
    try:
        yield
    except httpcore.TimeoutException as exc:
        raise httpx.TimeoutException(str(exc) or "timed out", request=request) from exc
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, httpcore.ProxyError) as exc:
        raise httpx.TransportError(str(exc) or type(exc).__name__, request=request) from exc


def guarded_client(allowed_networks: Sequence[IPNetwork], deadline: Deadline) -> httpx.Client:
    """An httpx client whose connections pass the address check and share `deadline`. It follows no
    redirects itself (a caller that wants them checks each hop, as `fetch` does) and reads no proxy
    or credentials from the environment."""
    return httpx.Client(
        transport=_GuardedTransport(_GuardedBackend(allowed_networks, deadline)),
        follow_redirects=False,
        trust_env=False,
        timeout=deadline.seconds,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
    )


# ------------------------------------------------------------------------------------------- fetch


@dataclass
class _Where:
    """The URL asked for and the hop being fetched, to name both in errors."""

    url: str
    hop: str

    def __str__(self) -> str:
        return self.url if self.hop == self.url else f"{self.url} (redirected to {self.hop})"


def fetch(url: str, policy: FetchPolicy) -> bytes:
    """The body of `url` once it answers 200 (after at most `policy.max_redirects` redirects).

    Raises `UrlNotAllowed` (not http(s), or a non-public address), `ResponseTooLarge` and
    `FetchFailed` (no answer, an HTTP error status, the deadline passed, too many redirects)."""
    chunks: list[bytes] = []
    fetch_into(url, policy, chunks.append)
    return b"".join(chunks)


def fetch_into(url: str, policy: FetchPolicy, write: Callable[[bytes], object]) -> int:
    """As `fetch`, but the body goes to `write` chunk by chunk as it arrives (large files go to disk,
    not memory); returns its size. A refused or failed fetch may have written part of it."""
    deadline = Deadline(policy.deadline_s)
    where = _Where(url, url)
    with guarded_client(policy.allowed_networks, deadline) as client, _explained(where, deadline):
        for _ in range(policy.max_redirects + 1):
            _check_url(where)
            with client.stream("GET", where.hop) as response:
                if not response.is_redirect:
                    return _read_body(response, where, policy.max_bytes, write)
                where.hop = str(response.url.join(response.headers["location"]))
    raise FetchFailed(f"{url} redirected more than {policy.max_redirects} times")


# The shape `check_url` accepts, for wire schemas (so the OpenAPI spec says it): http(s), a host.
HTTP_URL_PATTERN = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#]+([/?#]\S*)?$"


def check_url(url: str) -> None:
    """Refuse (`UrlNotAllowed`) what is not an absolute http(s) URL with a host; the address is
    checked later, when a connection is opened."""
    _check_url(_Where(url, url))


def _check_url(where: _Where) -> None:
    try:
        parsed = httpx.URL(where.hop)
    except httpx.InvalidURL:
        raise UrlNotAllowed(f"{where} is not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise UrlNotAllowed(f"{where} is not an http(s) URL; only http and https URLs are fetched")
    if not parsed.host:
        raise UrlNotAllowed(f"{where} names no host")


@contextmanager
def _explained(where: _Where, deadline: Deadline, action: str = "download") -> Iterator[None]:
    """Errors from the network as ours, naming the URL (and the redirect that led somewhere else)."""
    try:
        yield
    except AddressRefused as exc:
        raise UrlNotAllowed(f"{where} resolves to {exc.address}, {exc.reason}; {REFUSAL}") from None
    except httpx.TimeoutException:
        if deadline.passed:
            raise FetchFailed(f"{where} did not finish within {deadline.seconds:g} s") from None
        raise FetchFailed(f"could not {action} {where} (timed out)") from None
    except httpx.HTTPError as exc:
        raise FetchFailed(f"could not {action} {where} ({exc})") from None
    except httpx.InvalidURL:
        raise FetchFailed(f"{where} redirects to an invalid URL") from None


def _read_body(response: httpx.Response, where: _Where, max_bytes: int, write: Callable[[bytes], object]) -> int:
    if response.status_code != 200:
        raise FetchFailed(f"{where} answered HTTP {response.status_code}")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:  # refused unread; a smaller claim is not trusted
        raise ResponseTooLarge(f"{where} is larger than {_size(max_bytes)}")
    received = 0
    for chunk in response.iter_raw():  # raw: we asked for no compression, so nothing inflates here
        received += len(chunk)
        if received > max_bytes:
            raise ResponseTooLarge(f"{where} is larger than {_size(max_bytes)}")
        write(chunk)
    return received


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n % 2**20 == 0 else f"{n} bytes"


# -------------------------------------------------------------------------------------------- post

MAX_ANSWER_BYTES = 64 * 2**10


@dataclass(frozen=True)
class PostAnswer:
    status_code: int
    location: str | None  # of a redirect, which `post` does not follow
    retry_after: str | None = None  # the Retry-After header as sent (seconds or an HTTP date)


def post(url: str, body: bytes, headers: dict[str, str], policy: FetchPolicy) -> PostAnswer:
    """POST `body` to `url` once. Redirects are not followed (a 3xx comes back as it is): a
    callback is delivered where it was addressed or not at all. At most `MAX_ANSWER_BYTES` of the
    answer are read, and nothing of it is kept.

    Raises `UrlNotAllowed` (not http(s), or a non-public address) and `FetchFailed` (no answer in time)."""
    deadline = Deadline(policy.deadline_s)
    where = _Where(url, url)
    _check_url(where)
    with (
        guarded_client(policy.allowed_networks, deadline) as client,
        _explained(where, deadline, "reach"),
        client.stream("POST", url, content=body, headers=headers) as response,
    ):
        received = 0
        for chunk in response.iter_raw():
            received += len(chunk)
            if received > MAX_ANSWER_BYTES:
                break
        return PostAnswer(response.status_code, response.headers.get("location"), response.headers.get("retry-after"))
