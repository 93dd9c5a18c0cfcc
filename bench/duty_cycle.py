"""Worker duty cycle: with a saturated queue, how much of the wall time the engine spends inside the
diffusers pipeline call, and what sits in the gap between one task's end and the next one's start.

The real service runs in this process (SQLite task store, local result folder, the worker with the
tiny model on the CPU, default settings); the queue is filled before the worker starts. The pipeline
call, the engine's `render` and the encoding of each image are timed by thin wrappers, so each gap
splits into:
- after: the pipeline returned -> `render` returned (the engine's own work after its last call);
- worker: `render` returned -> the next `render` started (in the pipelined worker only the lane's
  hand-over; in the sequential one encoding, storing, database writes and the claim);
- prepare: the next `render` started -> its pipeline call started (prompt checks, arguments).
The encode row is the time each image takes to encode, wherever it runs.

Two worker modes, run one after the other on the same engine: `pipelined` (the worker as it ships:
the next task is claimed during the current one's last step and queued in the engine's lane, while
the finished one is encoded, stored and completed) and `sequential` (`max_in_flight = 1`: claim,
render, encode, store, complete, then claim the next, as the worker did before the lane).

Target (docs/performance.md): duty cycle >= 0.98 and median gap < 10 ms.

    .venv/bin/python bench/duty_cycle.py [--quick] [--tasks N] [--rounds R] [--size 256] [--steps 4]
                                         [--modes pipelined,sequential] [--json PATH]

The last line is the headline alone, the pipelined duty cycle: `duty_cycle=0.991`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/duty_cycle.py`: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import TINY_CHECKPOINTS, Summary, emit, machine, note, quiet_libraries, table
from qwen_image_server.domain import GenerationRequest, ModelName
from qwen_image_server.engine import Engine
from qwen_image_server.engine.engine import RenderedPicture
from qwen_image_server.service import Service
from qwen_image_server.settings import Settings
from qwen_image_server.tasks.model import TERMINAL_STATUSES, NewTask, TaskStatus

Span = tuple[float, float]  # (start, end), time.perf_counter() seconds


@dataclass
class Timeline:
    """Start and end of every pipeline call, `Engine.render` call and image encoding."""

    pipeline: list[Span] = field(default_factory=list)
    render: list[Span] = field(default_factory=list)
    encode: list[Span] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def timed(self, spans: list[Span], call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                with self._lock:
                    spans.append((start, time.perf_counter()))

        return wrapper


@contextlib.contextmanager
def instrumented(engine: Engine, timeline: Timeline) -> Iterator[None]:
    """Time the engine's render calls, the diffusers pipeline calls inside them and the encodings."""
    pipeline = engine.pipeline(ModelName.QWEN_IMAGE)
    base = type(pipeline)
    timed_call = timeline.timed(timeline.pipeline, base.__call__)
    # A subclass made for this one object: the call syntax looks `__call__` up on the class.
    pipeline.__class__ = type(f"Timed{base.__name__}", (base,), {"__call__": timed_call})
    engine.render = timeline.timed(timeline.render, engine.render)  # type: ignore[method-assign]
    encode = RenderedPicture.encode
    RenderedPicture.encode = timeline.timed(timeline.encode, encode)  # type: ignore[method-assign]
    try:
        yield
    finally:
        pipeline.__class__ = base
        del engine.render  # the class's method again
        RenderedPicture.encode = encode  # type: ignore[method-assign]


@dataclass(frozen=True)
class DutyCycle:
    duty: float  # time inside pipeline calls / wall time from the first call's start to the last's end
    tasks_per_s: float
    gaps_ms: Summary  # next pipeline start - previous pipeline end
    after_ms: Summary
    worker_ms: Summary
    prepare_ms: Summary
    encode_ms: Summary  # each image's encoding, in the gap or overlapped with the next pipeline


def analyse(timelines: list[Timeline]) -> DutyCycle:
    """The duty cycle over several runs: the time inside pipeline calls over the runs' windows
    (first call's start to last call's end, each), and every gap between consecutive calls."""
    busy = wall = spacing = 0.0
    gaps: dict[str, list[float]] = {"gap": [], "after": [], "worker": [], "prepare": []}
    encodes: list[float] = []
    calls = 0
    for timeline in timelines:
        pipeline, render = sorted(timeline.pipeline), sorted(timeline.render)
        if len(pipeline) < 2 or len(render) != len(pipeline):
            raise RuntimeError(f"expected one pipeline call per render, got {len(pipeline)} and {len(render)}")
        encodes += [end - start for start, end in timeline.encode]
        busy += sum(end - start for start, end in pipeline)
        wall += pipeline[-1][1] - pipeline[0][0]
        spacing += pipeline[-1][0] - pipeline[0][0]
        calls += len(pipeline) - 1
        for i in range(len(pipeline) - 1):
            gaps["gap"].append(pipeline[i + 1][0] - pipeline[i][1])
            gaps["after"].append(render[i][1] - pipeline[i][1])
            gaps["worker"].append(render[i + 1][0] - render[i][1])
            gaps["prepare"].append(pipeline[i + 1][0] - render[i + 1][0])
    return DutyCycle(
        duty=busy / wall,
        tasks_per_s=calls / spacing,
        gaps_ms=_ms(gaps["gap"]),
        after_ms=_ms(gaps["after"]),
        worker_ms=_ms(gaps["worker"]),
        prepare_ms=_ms(gaps["prepare"]),
        encode_ms=_ms(encodes),
    )


def _ms(seconds: list[float]) -> Summary:
    return Summary.of(seconds).scaled(1000)


MODES = {"pipelined": None, "sequential": 1}  # the worker's max_in_flight (None: as it ships)


async def run_saturated(
    engine: Engine, data_dir: Path, requests: list[GenerationRequest], mode: str, timeout: float
) -> None:
    """Queue every request, start the service's worker, wait until all tasks have ended."""
    settings = Settings(**TINY_CHECKPOINTS, data_dir=data_dir, models=(ModelName.QWEN_IMAGE,))
    service = Service.build(settings, engine=engine, run_worker=True)
    if service.worker is not None and MODES[mode] is not None:
        service.worker.max_in_flight = MODES[mode]
    await service.store.start()
    for request in requests:
        await service.store.create(NewTask(request))
    deadline = time.monotonic() + timeout
    async with service.running():
        while await service.store.count_tasks(statuses=TERMINAL_STATUSES) < len(requests):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the tasks did not finish within {timeout:.0f} s")
            await asyncio.sleep(0.5)
        succeeded = await service.store.count_tasks(statuses=(TaskStatus.SUCCEEDED,))
    if succeeded != len(requests):
        raise RuntimeError(f"{len(requests) - succeeded} of {len(requests)} tasks did not succeed")


def main(argv: list[str] | None = None) -> dict[str, DutyCycle]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=12, help="tasks in the saturated queue per round [12; --quick: 6]")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each running every mode [2; --quick: 1]")
    parser.add_argument("--size", type=int, default=256, help="width and height [256]")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per task [4]")
    parser.add_argument("--format", default="png", choices=["png", "jpeg", "webp"], help="output format [png]")
    parser.add_argument("--modes", default="pipelined", help="worker modes, comma-separated [pipelined]")
    parser.add_argument("--quick", action="store_true", help="a short run (1 round of 6 tasks)")
    parser.add_argument("--timeout", type=float, default=240, help="give up after this many seconds [240]")
    parser.add_argument("--json", type=Path, help="also write the JSON record here")
    args = parser.parse_args(argv)
    count = 6 if args.quick else args.tasks
    if args.quick:
        args.rounds = 1
    modes = [mode.strip() for mode in args.modes.split(",")]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {', '.join(sorted(unknown))}; choose from {', '.join(MODES)}")

    quiet_libraries()
    engine = Engine(Settings(**TINY_CHECKPOINTS))
    engine.load(ModelName.QWEN_IMAGE)
    requests = [
        GenerationRequest.create(
            model="qwen-image",
            prompt=f"a red fox in snow, number {i}",
            width=args.size,
            height=args.size,
            num_inference_steps=args.steps,
            seed=i,
            output_format=args.format,
        )
        for i in range(count)
    ]
    # The modes take turns, a round at a time, so that the machine's drift hits each alike.
    timelines: dict[str, list[Timeline]] = {mode: [] for mode in modes}
    for round_ in range(args.rounds):
        for mode in modes[round_ % len(modes) :] + modes[: round_ % len(modes)]:
            note(f"round {round_ + 1}/{args.rounds}, {mode}: {count} tasks, {args.size}px, {args.steps} steps")
            timeline = Timeline()
            with instrumented(engine, timeline), tempfile.TemporaryDirectory(prefix="bench-duty-") as folder:
                asyncio.run(run_saturated(engine, Path(folder) / "data", requests, mode, args.timeout))
            timelines[mode].append(timeline)
    results = {mode: analyse(runs) for mode, runs in timelines.items()}
    _report(results, args, count)
    return results


def _report(results: dict[str, DutyCycle], args: argparse.Namespace, count: int) -> None:
    rows = []
    for mode, result in results.items():
        rows.append((f"{mode}: duty cycle {result.duty:.4f}, {result.tasks_per_s:.2f} tasks/s", "", "", ""))
        for name, summary in (
            ("  gap (pipeline end -> next start)", result.gaps_ms),
            ("    after (pipeline end -> render returns)", result.after_ms),
            ("    worker (render returns -> next render)", result.worker_ms),
            ("    prepare (next render -> pipeline)", result.prepare_ms),
            ("  encode, per image (wherever it runs)", result.encode_ms),
        ):
            rows.append((name, summary.median, summary.p95, summary.max))
    print(table([f"{args.rounds} x {count} tasks, ms", "median", "p95", "max"], rows))
    record = {
        "benchmark": "duty_cycle",
        "config": {
            "tasks": count,
            "rounds": args.rounds,
            "size": args.size,
            "steps": args.steps,
            "format": args.format,
        },
        "modes": {mode: _mode_record(result) for mode, result in results.items()},
        "targets": {"duty_cycle": ">= 0.98", "median_gap_ms": "< 10"},
        "machine": machine(),
    }
    headline = results.get("pipelined") or next(iter(results.values()))
    emit(record, ("duty_cycle", round(headline.duty, 3)), args.json)


def _mode_record(result: DutyCycle) -> dict[str, object]:
    return {
        "duty_cycle": round(result.duty, 4),
        "tasks_per_s": round(result.tasks_per_s, 3),
        "gap_ms": result.gaps_ms.as_dict(2),
        "after_ms": result.after_ms.as_dict(2),
        "worker_ms": result.worker_ms.as_dict(2),
        "prepare_ms": result.prepare_ms.as_dict(2),
        "encode_ms": result.encode_ms.as_dict(2),
    }


if __name__ == "__main__":
    main()
