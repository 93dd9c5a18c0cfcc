"""A real HTTP server on 127.0.0.1 in a thread, for tests that fetch URLs without the internet.

Routes are functions of the request handler, chosen by path (the query is left to the route).
Every response closes its connection, so each request (and each redirect hop) connects anew.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Route = Callable[[BaseHTTPRequestHandler], None]


def send_body(handler: BaseHTTPRequestHandler, body: bytes, *, status: int = 200, content_type: str = "") -> None:
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body)))
    if content_type:
        handler.send_header("Content-Type", content_type)
    handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(body)


def redirect(handler: BaseHTTPRequestHandler, location: str, status: int = 302) -> None:
    handler.send_response(status)
    handler.send_header("Location", location)
    handler.send_header("Content-Length", "0")
    handler.send_header("Connection", "close")
    handler.end_headers()


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    return handler.rfile.read(int(handler.headers.get("Content-Length", "0")))


def query(handler: BaseHTTPRequestHandler, name: str) -> str:
    return parse_qs(urlsplit(handler.path).query)[name][0]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: the tests hang up on purpose (cut-off bodies, deadlines)."""


@contextmanager
def serving(routes: dict[str, Route]) -> Iterator[str]:
    """Serve `routes` on 127.0.0.1; yields the base URL (http://127.0.0.1:PORT)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            route = routes.get(urlsplit(self.path).path)
            if route is None:
                send_body(self, b"not here", status=404)
            else:
                route(self)

        do_POST = do_GET  # routes read the body themselves (`read_body`)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
