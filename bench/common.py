"""What every benchmark shares: summary statistics, a plain table, the JSON record and headline.

Each benchmark prints a short table, then one line `json={...}` (also written to `--json PATH`),
then its headline figure alone as the LAST line (`name=value`), so scripts can `tail -n1` it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from qwen_image_server.domain import ModelName

# Every model loads from the tiny random-weight checkpoint (built offline in about a second).
TINY_CHECKPOINTS = {f"checkpoint_{name.value.replace('-', '_')}": "tiny" for name in ModelName}


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between ranks (numpy's default)."""
    if not samples:
        raise ValueError("no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0-100, got {q}")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Summary of one series of samples (seconds, milliseconds or ratios: the caller's unit)."""

    n: int
    median: float
    p95: float
    p99: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        return cls(
            n=len(samples),
            median=statistics.median(samples),
            p95=percentile(samples, 95),
            p99=percentile(samples, 99),
            mean=statistics.fmean(samples),
            min=min(samples),
            max=max(samples),
        )

    def scaled(self, factor: float) -> Summary:
        """The same summary in another unit (e.g. seconds to milliseconds)."""
        return Summary(
            n=self.n,
            median=self.median * factor,
            p95=self.p95 * factor,
            p99=self.p99 * factor,
            mean=self.mean * factor,
            min=self.min * factor,
            max=self.max * factor,
        )

    def as_dict(self, digits: int = 4) -> dict[str, float]:
        return {key: (value if key == "n" else round(value, digits)) for key, value in asdict(self).items()}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table: left-aligned first column, right-aligned numbers."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [value.ljust(widths[0]) if i == 0 else value.rjust(widths[i]) for i, value in enumerate(values)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line([str(h) for h in headers]), rule, *(line(row) for row in cells)])


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def machine() -> dict[str, Any]:
    """Where the figures came from (they only compare on the same machine)."""
    import torch

    return {
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def emit(record: dict[str, Any], headline: tuple[str, float | int], json_path: Path | None) -> None:
    """Print the JSON record (one line), write it to `json_path` if given, then the headline last."""
    name, value = headline
    record = {**record, "headline": {name: value}}
    text = json.dumps(record, sort_keys=True, default=str)
    if json_path is not None:
        json_path.write_text(text + "\n")
    print(f"json={text}")
    print(f"{name}={value}", flush=True)


def quiet_libraries() -> None:
    """No progress bars or chatter from diffusers/transformers between our table lines."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def note(message: str) -> None:
    """Progress of a long benchmark, on stderr so stdout stays the table, record and headline."""
    print(message, file=sys.stderr, flush=True)


def wait_until_ready(
    base_url: str, *, alive: Callable[[], bool], explain: Callable[[], str], timeout: float, path: str = "/readyz"
) -> None:
    """Poll `base_url/readyz` until it answers 200 (a worker has its models loaded; an API alone
    waits on `path="/healthz"`). Raises
    RuntimeError with `explain()` (e.g. the server's log) if the server exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the server exited:\n{explain()}")
        try:
            if httpx.get(f"{base_url}{path}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server did not become ready in {timeout:g} s:\n{explain()}")


def list_all_tasks(base_url: str, *, timeout: float = 30) -> list[dict[str, Any]]:
    """Every task the native API at `base_url` lists, page by page (newest first)."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{base_url}/v1/tasks", params=params, timeout=timeout).json()
        found.extend(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found


async def create_database(admin_url: str, prefix: str) -> str:
    """A fresh, empty PostgreSQL database on the server of `admin_url` (whose user may create
    databases), named `<prefix>_<random>`; its URL."""
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await _as_admin(admin_url, f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(admin_url: str, url: str) -> None:
    """Drop the database of `url`, its open connections too."""
    from sqlalchemy.engine import make_url

    await _as_admin(admin_url, f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


@asynccontextmanager
async def throwaway_database(admin_url: str, prefix: str = "qis_bench") -> AsyncIterator[str]:
    """A fresh database for the block, dropped after it (tests and benchmarks on PostgreSQL)."""
    url = await create_database(admin_url, prefix)
    try:
        yield url
    finally:
        await drop_database(admin_url, url)


async def _as_admin(admin_url: str, statement: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(statement)
    finally:
        await admin.dispose()
