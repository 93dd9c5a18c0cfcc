"""Hosts on one machine, simulated for real: each worker "host" is a Linux network namespace with its
own UTS name (so `socket.gethostname()`, and the worker id made of it, differ per host), joined by
a veth pair to a bridge in the root namespace, on a private /24 of its own.

The shared services live on the bridge's address in the root namespace: the moto S3 server binds
there, and PostgreSQL, which listens on 127.0.0.1 only, is reached through `TcpForwarder` (asyncio,
in a thread of the test process) on the bridge's address. Traffic never leaves the machine.

A host is cut off in one of two ways. `unplug()` sets the bridge's end of its veth down (the switch
port): its packets are dropped, no reset is sent, its open connections hang as in a real network
partition, and resume when the port comes back up. `cut()` sets the host's own end down: its
routes go with it, so its sends fail at once with "Network is unreachable".

Needs root and `ip netns` (iproute2); `why_unavailable()` says why not otherwise. Everything made
here is removed by `Network.close()` (deleting a namespace deletes its veth pair).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import threading
from dataclasses import dataclass, field


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def why_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "iproute2's `ip` or util-linux's `unshare` is missing"
    probe = f"qis-probe-{os.getpid()}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    """A network namespace whose processes see the shared services at `gateway`."""

    name: str  # also its host name
    namespace: str
    inner_link: str  # its end of the veth pair, inside the namespace
    outer_link: str  # the other end, on the bridge (the switch port)
    address: str
    gateway: str

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside this host: its network namespace and a UTS namespace named after it."""
        boot = 'hostname "$0" && exec "$@"'
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "--", "sh", "-c", boot, self.name, *argv]

    def cut(self) -> None:
        """The host's own link down: its routes go, so its sends fail at once (ENETUNREACH)."""
        ip("-n", self.namespace, "link", "set", self.inner_link, "down")

    def reconnect(self) -> None:
        ip("-n", self.namespace, "link", "set", self.inner_link, "up")

    def unplug(self) -> None:
        """The switch port down (the cable pulled at the far end): the host keeps its routes, its
        packets are dropped silently, its connections hang as in a partition."""
        ip("link", "set", self.outer_link, "down")

    def plug_in(self) -> None:
        ip("link", "set", self.outer_link, "up")


@dataclass
class Network:
    """A bridge on a private /24 and the hosts on it; `close()` removes them all."""

    tag: str = field(default_factory=lambda: f"{random.randrange(16**4):04x}")
    hosts: list[Host] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.subnet = _free_subnet()
        self.gateway = f"{self.subnet}.1"
        self.bridge = f"qisbr{self.tag}"
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add_host(self, name: str) -> Host:
        number = len(self.hosts) + 1
        namespace, outer, inner = f"qis-{self.tag}-{name}", f"qisv{self.tag}{number}", f"qish{self.tag}{number}"
        host = Host(name, namespace, inner, outer, f"{self.subnet}.{10 + number}", self.gateway)
        ip("netns", "add", namespace)
        self.hosts.append(host)
        ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", namespace)
        ip("link", "set", outer, "master", self.bridge)
        ip("link", "set", outer, "up")
        ip("-n", namespace, "addr", "add", f"{host.address}/24", "dev", inner)
        ip("-n", namespace, "link", "set", inner, "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", namespace, "route", "add", "default", "via", self.gateway)
        return host

    def close(self) -> None:
        for host in self.hosts:
            ip("netns", "del", host.namespace, check=False)
        ip("link", "del", self.bridge, check=False)


def _free_subnet() -> str:
    """A 10.x.y.0/24 that no route of this machine uses."""
    routes = ip("-4", "route", "show", "table", "all").stdout
    while True:
        subnet = f"10.{random.randrange(200, 250)}.{random.randrange(256)}"
        if f"{subnet}." not in routes:
            return subnet


class TcpForwarder:
    """Accepts TCP connections on `listen` and relays each to `target`, from a thread of its own."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self._target = target
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, args=(listen,), name="tcp-forwarder", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10)
        self.port: int = self._port

    def _run(self, listen: tuple[str, int]) -> None:
        try:
            self._loop.run_until_complete(self._serve(listen))
        finally:  # the relays still open, then the loop itself: an unclosed loop leaks its self-pipe
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.wait(pending))
            self._loop.close()

    async def _serve(self, listen: tuple[str, int]) -> None:
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._relay, *listen)
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stopped.wait()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, server_writer), _pipe(server_reader, client_writer))

    def close(self) -> None:
        if self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout=10)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
    finally:  # also when the forwarder stops (cancelled): no socket left for the GC to warn about
        writer.close()
