"""API efficiency against a ceiling: our `serve --no-worker` beside a minimal app with the same routes.

The ceiling is the least a Python server on the same stack can do for the same two calls: a FastAPI
app with synchronous SQLite (`def` routes, one connection per thread, WAL) that validates the same
body, inserts one row per create and reads one row per poll, on the same uvicorn with the same
settings. Ours does what a real service must on top (keys, limits, idempotency, queue position,
result links, migrations); the question is how much of the ceiling that keeps.

Both servers run as separate processes on loopback, one at a time; the load is `wrk` (a C load
generator, so the client is not what is measured: `apt-get install wrk`), `--connections` open
connections for `--seconds` per phase. Phases: creates (POST /v1/tasks), then polls (GET
/v1/tasks/{id} over tasks created before). Rounds alternate the two servers, so drift of the machine
lands on both; each figure is the median over `--rounds`.

    .venv/bin/python bench/api_ceiling.py [--quick] [--rounds R] [--seconds S] [--connections C]
        [--api-workers N[,N...]] [--json PATH]

With `--api-workers 1,2`, ours runs once per count as `serve --no-worker --api-workers N` (the
ceiling stays one process), to show how requests per second grow with API processes. The last
line is the headline alone: `api_ceiling_ratio=0.71` (polls per second, ours over the ceiling's).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/api_ceiling.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from pydantic import BaseModel, Field

from bench.common import emit, machine, note, table, wait_until_ready

TASK = {"model": "qwen-image", "prompt": "a red fox in snow", "size": "256x256", "num_inference_steps": 2}
POLLED_TASKS = 200  # polls cycle over this many tasks of each server


# -- the ceiling: a minimal app with the same two routes -------------------------------------------


class Body(BaseModel):  # at module level: FastAPI resolves the route's annotation by name
    model: str
    prompt: str = Field(min_length=1, max_length=2000)
    size: str = "1024x1024"
    num_inference_steps: int = Field(default=50, ge=1, le=100)


def serve_minimal(port: int, database: Path) -> None:
    """The minimal app until SIGTERM."""
    import uvicorn
    from fastapi import FastAPI, HTTPException

    local = threading.local()

    def connection() -> sqlite3.Connection:
        if not hasattr(local, "db"):
            local.db = sqlite3.connect(database, isolation_level=None)
            local.db.execute("PRAGMA journal_mode = WAL")
            local.db.execute("PRAGMA synchronous = NORMAL")
            local.db.execute("PRAGMA busy_timeout = 30000")
        return local.db  # type: ignore[no-any-return]

    connection().execute(
        "CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, status TEXT, request TEXT, created_at REAL)"
    )
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/tasks", status_code=202)
    def create(body: Body) -> dict[str, Any]:
        task = {"id": uuid.uuid4().hex, "status": "queued", "created_at": time.time()}
        connection().execute(
            "INSERT INTO tasks VALUES (?, ?, ?, ?)",
            (task["id"], task["status"], body.model_dump_json(), task["created_at"]),
        )
        return {**task, **body.model_dump()}

    @app.get("/v1/tasks/{task_id}")
    def poll(task_id: str) -> dict[str, Any]:
        row = connection().execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise HTTPException(404)
        return {"id": row[0], "status": row[1], "request": row[2], "created_at": row[3]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- the two servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ours_command(port: int, data_dir: Path, api_workers: int) -> list[str]:
    command = [sys.executable, "-m", "qwen_image_server", "serve", "--no-worker", "--model", "tiny"]
    command += ["--port", str(port), "--data-dir", str(data_dir)]
    return command + (["--api-workers", str(api_workers)] if api_workers > 1 else [])


def minimal_command(port: int, data_dir: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--serve-minimal", str(port), str(data_dir / "min.db")]


@contextlib.contextmanager
def running(command: list[str], port: int, log_path: Path) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ)
        try:
            wait_until_ready(
                url,
                alive=lambda: process.poll() is None,
                explain=lambda: log_path.read_text(errors="replace"),
                timeout=120,
                path="/healthz",  # ours serves no worker: /readyz would wait for one
            )
            yield url
        finally:
            process.terminate()
            process.wait(timeout=60)


# -- the load: wrk -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    per_second: float
    p50_ms: float
    p99_ms: float
    failures: int  # non-2xx answers and socket errors


_CREATE_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{body}]]
"""

_POLL_SCRIPT = """
local ids = {{{ids}}}
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/v1/tasks/" .. ids[(counter % #ids) + 1])
end
"""


def wrk(url: str, script: str, args: argparse.Namespace, workdir: Path) -> Load:
    path = workdir / "load.lua"
    path.write_text(script)
    threads = min(2, args.connections)
    command = ["wrk", "--latency", "-t", str(threads), "-c", str(args.connections), "-d", f"{args.seconds}s"]
    report = subprocess.run([*command, "-s", str(path), url], capture_output=True, text=True, check=True).stdout
    return parse_wrk(report)


def parse_wrk(report: str) -> Load:
    """The figures of wrk's `--latency` report."""
    per_second = float(_find(r"Requests/sec:\s+([\d.]+)", report))
    p50, p99 = (_milliseconds(_find(rf"\s{q}%\s+([\d.]+\w+)", report)) for q in (50, 99))
    failures = int(_find(r"Non-2xx or 3xx responses: (\d+)", report, "0"))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report)
    failures += sum(int(n) for n in errors.groups()) if errors else 0
    return Load(per_second, p50, p99, failures)


def _find(pattern: str, text: str, default: str | None = None) -> str:
    found = re.search(pattern, text)
    if found is None:
        if default is None:
            raise RuntimeError(f"wrk's report has no {pattern!r}:\n{text}")
        return default
    return found.group(1)


def _milliseconds(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def measure(url: str, args: argparse.Namespace, workdir: Path) -> dict[str, Load]:
    with httpx.Client(base_url=url, timeout=30) as client:
        ids = [_created(client.post("/v1/tasks", json=TASK)) for _ in range(POLLED_TASKS)]
        assert client.get(f"/v1/tasks/{ids[0]}").status_code == 200
    creates = wrk(url + "/v1/tasks", _CREATE_SCRIPT.format(body=_json(TASK)), args, workdir)
    polls = wrk(url, _POLL_SCRIPT.format(ids=", ".join(f'"{i}"' for i in ids)), args, workdir)
    return {"creates": creates, "polls": polls}


def _created(response: httpx.Response) -> str:
    if response.status_code != 202:
        raise RuntimeError(f"a create answered {response.status_code}: {response.text}")
    return str(response.json()["id"])


def _json(value: dict[str, Any]) -> str:
    import json

    return json.dumps(value)


# -- the run -----------------------------------------------------------------------------------------


def servers(args: argparse.Namespace) -> list[str]:
    """The servers of a round: ours with each `--api-workers` count (`ours`, `ours x2`...), the ceiling."""
    return [_ours(n) for n in args.api_workers] + ["ceiling"]


def _ours(api_workers: int) -> str:
    return "ours" if api_workers == 1 else f"ours x{api_workers}"


def run(args: argparse.Namespace) -> dict[str, list[dict[str, Load]]]:
    rounds: dict[str, list[dict[str, Load]]] = {name: [] for name in servers(args)}
    processes = {_ours(n): n for n in args.api_workers}
    with tempfile.TemporaryDirectory(prefix="qis-ceiling-") as tmp:
        for number in range(args.rounds):
            for index, name in enumerate(rounds):
                workdir = Path(tmp) / f"{index}-{number}"
                workdir.mkdir()
                port = free_port()
                command = (
                    ours_command(port, workdir, processes[name])
                    if name in processes
                    else minimal_command(port, workdir)
                )
                note(f"round {number + 1}/{args.rounds}: {name}")
                with running(command, port, workdir / "serve.log") as url:
                    rounds[name].append(measure(url, args, workdir))
    return rounds


def median(rounds: list[dict[str, Load]], phase: str, field: str) -> float:
    return statistics.median(getattr(r[phase], field) for r in rounds)


def report(rounds: dict[str, list[dict[str, Load]]], args: argparse.Namespace) -> dict[str, Any]:
    """The table, and the figures of the JSON record; the ratios are of the first `--api-workers`."""
    figures: dict[str, Any] = {"machine": machine(), "connections": args.connections, "seconds": args.seconds}
    figures["api_workers"] = args.api_workers
    first = _ours(args.api_workers[0])
    rows = []
    for phase in ("creates", "polls"):
        ours, ceiling = (median(rounds[n], phase, "per_second") for n in (first, "ceiling"))
        figures[f"{phase}_ratio"] = round(ours / ceiling, 3)
        for name in rounds:
            per_second = median(rounds[name], phase, "per_second")
            p50, p99 = (median(rounds[name], phase, f) for f in ("p50_ms", "p99_ms"))
            failures = sum(r[phase].failures for r in rounds[name])
            figures[f"{name}_{phase}"] = {"per_s": per_second, "p50_ms": p50, "p99_ms": p99, "failures": failures}
            rows.append([phase, name, f"{per_second:.0f}", f"{p50:.1f}", f"{p99:.1f}", failures])
    print(table(["phase", "server", "per s", "p50 ms", "p99 ms", "failures"], rows))
    print(f"{first}: creates {figures['creates_ratio']:.2f} of the ceiling, polls {figures['polls_ratio']:.2f}")
    return figures


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve-minimal", nargs=2, metavar=("PORT", "DATABASE"), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--api-workers",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1],
        help="API processes of ours, or several counts to compare (1,2); the ratios are of the first",
    )
    parser.add_argument("--quick", action="store_true", help="one round of 3 s phases (a smoke run)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 3
    return args


def main() -> None:
    args = parse_args()
    if args.serve_minimal:
        serve_minimal(int(args.serve_minimal[0]), Path(args.serve_minimal[1]))
        return
    if shutil.which("wrk") is None:
        sys.exit("this benchmark needs wrk, the HTTP load generator: apt-get install wrk")
    figures = report(run(args), args)
    emit(figures, ("api_ceiling_ratio", figures["polls_ratio"]), args.json)


if __name__ == "__main__":
    main()
