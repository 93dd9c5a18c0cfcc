"""Fixtures of the e2e tests: the processes a test starts, and a local receiver for task callbacks."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.e2e.processes import Process


@dataclass(frozen=True)
class ReceivedCallback:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class CallbackReceiver:
    """An HTTP server on a free loopback port that answers 204 to every POST and keeps what came."""

    def __init__(self) -> None:
        self._received: list[ReceivedCallback] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver._lock:
                    receiver._received.append(ReceivedCallback(self.path, headers, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the test reads `received`

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/callback"
        self._thread = threading.Thread(target=self._server.serve_forever, name="callback-receiver", daemon=True)
        self._thread.start()

    @property
    def received(self) -> list[ReceivedCallback]:
        with self._lock:
            return list(self._received)

    def wait_for(self, count: int, timeout: float = 30) -> list[ReceivedCallback]:
        """At least `count` callbacks, waiting up to `timeout` seconds for them."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def callback_receiver() -> Iterator[CallbackReceiver]:
    receiver = CallbackReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Every process a test starts; whatever is still running at the end is killed."""
    started: list[Process] = []
    yield started
    for process in started:
        if process.alive:
            process.stop(signal.SIGKILL)
