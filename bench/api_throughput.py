"""API throughput: task creates per second, task polls per second and Server-Sent Event streams held,
with p50/p99 latency, on this machine, against the service with a stand-in engine (so only the
service is measured: HTTP, validation, the task store, the worker's claims and completions).

The server is this script in `--serve` mode, a separate process on loopback: the real app and
service (SQLite task store, local results, an in-process worker) with `bench.fake_engine`'s
`InstantEngine`, whose denoising steps take `--step-ms` each. This process is the load generator:
an asyncio HTTP client keeping `--concurrency` requests in flight, each phase bounded in time.

Phases: creates (POST /v1/tasks, 2 steps each), polls (GET /v1/tasks/{id} of those tasks), then
`--streams` event streams opened on new tasks (queued behind the backlog, so they stay open) and
held for the phase while a probe polls one task, to show what held streams cost other callers.

    .venv/bin/python bench/api_throughput.py [--quick] [--seconds S] [--concurrency C] [--json PATH]

The last line is the headline alone: `creates_per_s=850`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/api_throughput.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench.common import Summary, emit, machine, note, table, wait_until_ready

TASK = {"model": "qwen-image", "prompt": "a red fox in snow", "size": "256x256", "num_inference_steps": 2}


# -- the server (a separate process) --------------------------------------------------------------


def serve(port: int, data_dir: Path, step_seconds: float) -> None:
    """The app and service with the stand-in engine, until SIGTERM."""
    import uvicorn

    from bench.fake_engine import InstantEngine
    from qwen_image_server.api.app import create_app
    from qwen_image_server.domain import ModelName
    from qwen_image_server.service import Service
    from qwen_image_server.settings import Settings

    settings = Settings(data_dir=data_dir, models=(ModelName.QWEN_IMAGE,))
    service = Service.build(settings, engine=InstantEngine(step_seconds), run_worker=True)
    uvicorn.run(create_app(service), host="127.0.0.1", port=port, log_level="warning")


@contextlib.contextmanager
def server(data_dir: Path, step_seconds: float) -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    log_path = data_dir.parent / "serve.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", str(port), "--data-dir", str(data_dir)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--step-ms", str(step_seconds * 1000)], stdout=log, stderr=subprocess.STDOUT, env=os.environ
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(
                url,
                alive=lambda: process.poll() is None,
                explain=lambda: (log_path).read_text(errors="replace"),
                timeout=60,
            )
            yield url
        finally:
            process.terminate()
            process.wait(timeout=60)


# -- the load generator ---------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    seconds: float
    latencies: list[float] = field(default_factory=list)  # of the requests that succeeded
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return len(self.latencies) / self.seconds

    def latency_ms(self) -> Summary | None:
        return Summary.of(self.latencies).scaled(1000) if self.latencies else None

    def failed(self, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1


async def closed_loop(
    phase: Phase, concurrency: int, request: Callable[[int], Awaitable[httpx.Response]], expected: int
) -> None:
    """`concurrency` loops, each sending its next request as soon as the last one answered, for
    `phase.seconds`; a request counts when it answers `expected`."""
    deadline = time.perf_counter() + phase.seconds
    counter = iter(range(1 << 62))

    async def loop() -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            try:
                response = await request(next(counter))
            except httpx.HTTPError as exc:
                phase.failed(type(exc).__name__)
                continue
            if response.status_code == expected:
                phase.latencies.append(time.perf_counter() - start)
            else:
                phase.failed(str(response.status_code))

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - started  # the last requests may end past the deadline


@dataclass
class Streams:
    opened: int = 0  # answered 200 and sent a first event
    held: int = 0  # still open when the phase ended
    events: int = 0
    failures: dict[str, int] = field(default_factory=dict)


async def hold_stream(client: httpx.AsyncClient, task_id: str, until: float, streams: Streams) -> None:
    first = True
    try:
        async with client.stream("GET", f"/v1/tasks/{task_id}/events") as response:
            if response.status_code != 200:
                streams.failures[str(response.status_code)] = streams.failures.get(str(response.status_code), 0) + 1
                return
            async with asyncio.timeout(max(until - time.perf_counter(), 0.001)):
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        streams.events += 1
                        if first:
                            streams.opened, first = streams.opened + 1, False
    except TimeoutError:
        streams.held += 1  # still open at the end: what we wanted
    except httpx.HTTPError as exc:
        streams.failures[type(exc).__name__] = streams.failures.get(type(exc).__name__, 0) + 1


async def run_load(url: str, args: argparse.Namespace) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=args.concurrency + args.streams + 8, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        await client.post("/v1/tasks", json=TASK)  # warm-up: first request of each route compiles things
        ids: list[str] = []

        async def create(_: int) -> httpx.Response:
            response = await client.post("/v1/tasks", json=TASK)
            if response.status_code == 202:
                ids.append(response.json()["id"])
            return response

        creates = Phase("creates", args.seconds)
        note(f"creates: {args.concurrency} in flight for {args.seconds:.0f} s")
        await closed_loop(creates, args.concurrency, create, 202)

        polls = Phase("polls", args.seconds)
        note(f"polls: {args.concurrency} in flight for {args.seconds:.0f} s")
        await closed_loop(polls, args.concurrency, lambda i: client.get(f"/v1/tasks/{ids[i % len(ids)]}"), 200)

        note(f"events: {args.streams} streams held for {args.seconds:.0f} s, one probe polling")
        streams, probe = await hold_streams(client, args, ids[0])
        backlog = (await client.get("/v1/tasks", params={"status": "queued", "limit": 1})).json()
    return {"creates": creates, "polls": polls, "streams": streams, "probe": probe, "backlog": backlog}


async def hold_streams(client: httpx.AsyncClient, args: argparse.Namespace, probed: str) -> tuple[Streams, Phase]:
    watched = [
        (await client.post("/v1/tasks", json={**TASK, "priority": -1})).json()["id"] for _ in range(args.streams)
    ]
    streams = Streams()
    until = time.perf_counter() + args.seconds
    holders = [asyncio.create_task(hold_stream(client, task_id, until, streams)) for task_id in watched]
    probe = Phase("poll while streams are held", args.seconds)
    await asyncio.sleep(min(1.0, args.seconds / 4))  # let the streams open first
    probe.seconds = max(until - time.perf_counter(), 0.1)
    await closed_loop(probe, 1, lambda _: client.get(f"/v1/tasks/{probed}"), 200)
    await asyncio.gather(*holders)
    return streams, probe


# -- report ---------------------------------------------------------------------------------------


def report(results: dict[str, Any], args: argparse.Namespace) -> float:
    creates, polls, probe, streams = results["creates"], results["polls"], results["probe"], results["streams"]
    rows = []
    for phase in (creates, polls, probe):
        latency = phase.latency_ms()
        p50, p99 = (latency.median, latency.p99) if latency else (float("nan"), float("nan"))
        rows.append((phase.name, round(phase.per_second, 1), p50, p99, sum(phase.errors.values())))
    print(table(["phase", "per s", "p50 ms", "p99 ms", "errors"], rows))
    print(
        f"event streams: {streams.held} of {args.streams} held open for {args.seconds:.0f} s "
        f"({streams.opened} opened, {streams.events / args.seconds:.0f} events/s, failures {streams.failures or 0})"
    )
    record = {
        "benchmark": "api_throughput",
        "config": {
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "streams": args.streams,
            "step_ms": args.step_ms,
            "engine": "bench.fake_engine.InstantEngine",
        },
        "creates_per_s": round(creates.per_second, 1),
        "polls_per_s": round(polls.per_second, 1),
        "create_ms": _latency(creates),
        "poll_ms": _latency(polls),
        "poll_ms_while_streams_held": _latency(probe),
        "streams": {
            "asked": args.streams,
            "opened": streams.opened,
            "held": streams.held,
            "events_per_s": round(streams.events / args.seconds, 1),
            "failures": streams.failures,
        },
        "errors": {"creates": creates.errors, "polls": polls.errors, "probe": probe.errors},
        "machine": machine(),
    }
    headline = round(creates.per_second)
    emit(record, ("creates_per_s", headline), args.json)
    return headline


def _latency(phase: Phase) -> dict[str, float] | None:
    latency = phase.latency_ms()
    return None if latency is None else {"p50": round(latency.median, 2), "p99": round(latency.p99, 2), "n": latency.n}


def main(argv: list[str] | None = None) -> float | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase [10; --quick: 3]")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight [16]")
    parser.add_argument("--streams", type=int, default=100, help="event streams to hold [100; --quick: 30]")
    parser.add_argument("--step-ms", type=float, default=20.0, help="the stand-in engine's time per step [20]")
    parser.add_argument("--quick", action="store_true", help="3 s phases, 30 streams")
    parser.add_argument("--json", type=Path, help="also write the JSON record here")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the server process
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.data_dir, args.step_ms / 1000)
        return None
    if args.quick:
        args.seconds, args.streams = 3.0, 30
    with (
        tempfile.TemporaryDirectory(prefix="bench-api-") as folder,
        server(Path(folder) / "data", args.step_ms / 1000) as url,
    ):
        results = asyncio.run(run_load(url, args))
    return report(results, args)


if __name__ == "__main__":
    main()
