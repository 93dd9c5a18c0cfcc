"""Wake-up latency across processes on PostgreSQL (LISTEN/NOTIFY, tasks/notify.py).

Two task stores on one throwaway database, as an API process and a worker process would have. A
reader waits on a task through store B (`wait_for_change`, with a 60 s timeout: the poll fallback
would answer far later); store A writes a progress heartbeat. Measured per change: from the start
of A's write until B's reader wakes (that includes A's own transaction), from the return of A's
write until B wakes (0 when the notification came before A's commit returned), and A's write
alone. Then the cost: the same heartbeats with the NOTIFY left out (`write_without_notify_ms`).

Needs a PostgreSQL server where it may create a database: `--admin-url`, default
$QWEN_IMAGE_TEST_POSTGRES_URL (e.g. postgresql+asyncpg://postgres@127.0.0.1/postgres).
The last line is `wake_latency_ms=X` (the median).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any
from unittest.mock import patch

from bench.common import Summary, emit, machine, table, throwaway_database
from qwen_image_server.domain import GenerationRequest, ModelName
from qwen_image_server.tasks import sql
from qwen_image_server.tasks.model import NewTask, Progress
from qwen_image_server.tasks.sql import SqlTaskStore

WORKER = "bench-worker"
POLL_FALLBACK_SECONDS = 60.0


async def measure(database_url: str, changes: int) -> dict[str, list[float]]:
    writer, reader = SqlTaskStore.open(database_url), SqlTaskStore.open(database_url)
    await writer.start()
    await reader.start()
    try:
        request = GenerationRequest.create(model=ModelName.QWEN_IMAGE, prompt="a fox", num_inference_steps=changes)
        task = await writer.create(NewTask(request))
        await writer.claim(WORKER, [ModelName.QWEN_IMAGE], lease_seconds=600)
        wake_ms, after_write_ms, write_ms = [], [], []
        for step in range(1, changes + 1):
            waiter = asyncio.create_task(reader.wait_for_change(task.id, POLL_FALLBACK_SECONDS))
            await asyncio.sleep(0.01)  # the reader is waiting; earlier notifications have arrived
            start = time.perf_counter()
            await writer.heartbeat(task.id, WORKER, 600, Progress(step, changes))
            written = time.perf_counter()
            await waiter
            woken = time.perf_counter()
            wake_ms.append((woken - start) * 1000)
            after_write_ms.append(max(0.0, woken - written) * 1000)
            write_ms.append((written - start) * 1000)
        without = await writes_without_notify(writer, task.id, changes)
        return {"wake_ms": wake_ms, "wake_after_write_ms": after_write_ms, "write_ms": write_ms, **without}
    finally:
        await reader.close()
        await writer.close()


async def writes_without_notify(writer: SqlTaskStore, task_id: str, changes: int) -> dict[str, list[float]]:
    """The same heartbeats with the store's NOTIFY replaced by nothing (a bench-only patch)."""

    def silent(*_args: object, **_kwargs: object) -> None:
        return None

    write_ms = []
    with patch.object(sql, "notify_changed", silent):
        for step in range(1, changes + 1):
            start = time.perf_counter()
            await writer.heartbeat(task_id, WORKER, 600, Progress(step, changes))
            write_ms.append((time.perf_counter() - start) * 1000)
    return {"write_without_notify_ms": write_ms}


async def run(args: argparse.Namespace) -> dict[str, list[float]]:
    async with throwaway_database(args.admin_url) as url:
        return await measure(url, args.changes)


def report(samples: dict[str, list[float]], args: argparse.Namespace) -> float:
    summaries = {name: Summary.of(values) for name, values in samples.items()}
    print(f"PostgreSQL wake-up across two stores, {args.changes} progress heartbeats")
    rows = [[name, s.median, s.p95, s.min, s.max] for name, s in summaries.items()]
    print(table(["ms", "median", "p95", "min", "max"], rows))
    headline = round(summaries["wake_ms"].median, 2)
    record: dict[str, Any] = {
        "machine": machine(),
        "settings": {"changes": args.changes},
        **{name: summary.as_dict() for name, summary in summaries.items()},
    }
    emit(record, ("wake_latency_ms", headline), args.json)
    return headline


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    default_url = os.environ.get("QWEN_IMAGE_TEST_POSTGRES_URL")
    parser.add_argument("--admin-url", default=default_url, required=default_url is None, help="PostgreSQL URL")
    parser.add_argument("--changes", type=int, default=20, help="changes measured [20]")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON record here")
    args = parser.parse_args(argv)
    return report(asyncio.run(run(args)), args)


if __name__ == "__main__":
    main()
