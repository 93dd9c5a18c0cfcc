"""The engine end to end (`Engine.render`: prompt encoding, denoising, VAE decoding), each speed
option on and off, side by side in one run.

Variants, the first three taking turns round by round (same process, same weights):
- `stock`: diffusers' `QwenImagePipeline` called once per image, CFG as two transformer calls: the
  engine before it had a loop of its own (the baseline);
- `two_pass`: the engine with `cfg_batching=false` (the images of a request still in one call);
- `default`: the engine as it ships (CFG as one call of twice the batch);
then cumulatively, each an engine of its own built from `Settings` (the engine's own start checks
and `_activate`: FP8 before placing, then the attention backend, then compilation), the one before
it freed first:
- `attention`: + the first attention backend of `ATTENTION_BACKENDS` usable here (`attention_backend`);
- `compile`: + `torch.compile` of the repeated blocks (`compile`);
- `fp8`: + FP8 dynamic quantization (`quantization=fp8`; GPUs of compute capability 8.9+).
An option that the engine refuses here is reported as skipped, one that fails as failed; the run goes on.

Each variant makes, per round: `single` (one request, one image), `images` (one request of
`--batch` images) and `requests` (`--batch` one-image requests in one `render_batch` call, as a
worker with `max_batch_size` does). Reported: seconds per image, images per second, the median time
of a denoising step, and on a GPU the peak memory. The last line is `engine_speedup=X`: the default
configuration's seconds per image (single) over the best row's, same run (rows at `--steps`).

`--long-steps N` adds a row `single@N` to `default` and each cumulative variant: one image at N
steps (the models' default is 50), measured once after the variant's rounds, so that seconds per
image at 50 steps are measured, not carried over from ms/step.

Each row is printed (`row ...`, flushed) as soon as its last round is done, and with `--json` the
record so far is written after each row (`"partial": true`), so a run stopped by a time limit still
leaves its figures; the full table, the record and the headline follow at the end.

    .venv/bin/python bench/engine_speed.py --tiny            # the tiny model on the CPU, ~2 min
    .venv/bin/python bench/engine_speed.py --json e.json     # full size, random weights, on a GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/engine_speed.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine, note, quiet_libraries, table
from bench.full_size import add_engine_options, engine_settings, settle_engine_options, use_full_size_components

TURNS = ("stock", "two_pass", "default")
CUMULATIVE = ("attention", "compile", "fp8")
VARIANTS = TURNS + CUMULATIVE
MODES = ("single", "images", "requests")
ATTENTION_BACKENDS = ("_native_cudnn", "_flash_3", "flash", "sage")
PROMPTS = ("a red fox in fresh snow, morning light", "a lighthouse on a cliff at dawn, oil painting",
           "a bowl of ramen, studio photograph", "a city street at night in the rain, neon signs")  # fmt: skip


@dataclass
class Sample:
    seconds: float
    images: int
    step_seconds: list[float]


@dataclass
class Row:
    variant: str
    mode: str
    steps: int
    samples: list[Sample] = field(default_factory=list)
    peak_gb: float | None = None
    note: str = ""

    @property
    def seconds_per_image(self) -> float | None:
        if not self.samples:
            return None
        return statistics.median(sample.seconds / sample.images for sample in self.samples)

    @property
    def step_ms(self) -> float | None:
        steps = [s for sample in self.samples for s in sample.step_seconds]
        return 1000 * statistics.median(steps) if steps else None


class Bench:
    """The engine being measured (one at a time), its pipeline and the requests of each mode."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from qwen_image_server.domain import GenerationRequest

        self.torch = torch
        self.args = args
        self.cuda = torch.device(args.device).type == "cuda"
        if not args.tiny:
            use_full_size_components(torch.device(args.device), getattr(torch, args.dtype), args.layers)
        self.default_settings = engine_settings(args)
        self.engine: Any = None
        self.pipeline: Any = None
        self.use(self.default_settings)

        def request(prompt: str, seed: int, images: int = 1, steps: int = args.steps) -> GenerationRequest:
            return GenerationRequest.create(model="qwen-image", prompt=prompt, width=args.size, height=args.size,
                                            num_inference_steps=steps, seed=seed, true_cfg_scale=4.0,
                                            num_images_per_prompt=images)  # fmt: skip

        self.single = request(PROMPTS[0], 1)
        self.images = request(PROMPTS[0], 1, args.batch)
        self.requests = [request(PROMPTS[i % len(PROMPTS)], i + 1) for i in range(args.batch)]
        self.long = request(PROMPTS[0], 1, steps=args.long_steps or args.steps)

    def use(self, settings: Any) -> None:
        """An engine built from `settings` (the previous one and its memory freed first), its
        model loaded: the engine's start checks and `_activate` run as when serving. A setting the
        engine refuses here raises `QwenImageError`."""
        from qwen_image_server.engine import Engine

        self.engine = self.pipeline = None
        gc.collect()
        if self.cuda:
            self.torch._dynamo.reset()  # compiled code holds the old transformer
            self.torch.cuda.empty_cache()
        engine = Engine(settings)
        self.pipeline = engine.pipeline(settings.models[0])
        self.engine = engine

    # -- one measurement -------------------------------------------------------------------------

    def measure(self, variant: str, mode: str) -> Sample:
        steps: list[float] = []
        last = [0.0]

        def on_step(*_: Any) -> None:
            self.synchronize()
            now = time.perf_counter()
            if last[0]:
                steps.append(now - last[0])
            last[0] = now

        self.synchronize()
        start = time.perf_counter()
        images = self._run(variant, mode, on_step)
        self.synchronize()
        return Sample(time.perf_counter() - start, images, steps)

    def _run(self, variant: str, mode: str, on_step: Callable[..., None]) -> int:
        from qwen_image_server.domain import BatchEntry

        if variant == "stock":
            asked = {"single": [self.single], "images": self._each_image(self.images), "requests": self.requests}
            for one in asked[mode]:
                self._stock(one, on_step)
            return len(asked[mode])
        if variant in TURNS:  # the same engine, CFG batched or not
            self.engine.settings = self.default_settings.model_copy(update={"cfg_batching": variant != "two_pass"})
        if mode == "requests":
            outcomes = self.engine.render_batch([BatchEntry(one, on_step=on_step if i == 0 else None)
                                                 for i, one in enumerate(self.requests)])  # fmt: skip
            failed = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
            if failed:
                raise failed[0]
            return len(self.requests)
        asked = {"single": self.single, "images": self.images, LONG: self.long}[mode]
        return len(self.engine.render(asked, on_step=on_step))

    def _stock(self, one: Any, on_step: Callable[..., None]) -> None:
        """The request as the engine ran it before: a stock pipeline call per image."""
        torch = self.torch

        def step_end(*_: Any) -> dict[str, Any]:
            on_step()
            return {}

        with torch.inference_mode():
            self.pipeline(prompt=one.prompt, negative_prompt=" ", true_cfg_scale=one.true_cfg_scale,
                          width=one.width, height=one.height, num_inference_steps=one.num_inference_steps,
                          generator=torch.Generator().manual_seed(one.seed), callback_on_step_end=step_end,
                          output_type="pil")  # fmt: skip

    @staticmethod
    def _each_image(request: Any) -> list[Any]:
        return [request.model_copy(update={"seed": seed, "num_images_per_prompt": 1}) for seed in request.image_seeds]

    # -- helpers -------------------------------------------------------------------------------------

    def synchronize(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float | None:
        return self.torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None


LONG = "long"  # the mode of `--long-steps` (shown as single@N)


class Unavailable(Exception):
    """An option that cannot run on this machine (reported as skipped)."""


def variant_settings(bench: Bench, variant: str) -> tuple[Any, str]:
    """The settings of a cumulative variant (each adds its option to the one before) and the detail
    for the table; `Unavailable` when the engine's own start checks refuse the option here."""
    from qwen_image_server.engine import speedups
    from qwen_image_server.errors import QwenImageError

    device, dtype = bench.torch.device(bench.args.device), getattr(bench.torch, bench.args.dtype)
    backend = next((name for name in ATTENTION_BACKENDS if _usable(bench, name, device, dtype)), None)
    if backend is None and variant == "attention":
        raise Unavailable("no attention backend beyond native SDPA is usable here")
    update: dict[str, Any] = {"attention_backend": backend} if backend else {}
    detail = f"attention backend {backend or bench.default_settings.attention_backend}"
    if CUMULATIVE.index(variant) >= CUMULATIVE.index("compile"):
        update["compile"] = True
        detail += ", compile_repeated_blocks"
    settings = bench.default_settings.model_copy(update=update)
    if variant == "fp8":
        settings = settings.model_copy(update={"quantization": "fp8"})
        detail += f", fp8 (kept in bf16: {', '.join(settings.fp8_skip)})"
    try:
        speedups.check_speedups(settings, device, dtype)
    except QwenImageError as exc:
        raise Unavailable(exc.message) from None
    return settings, detail


def _usable(bench: Bench, backend: str, device: Any, dtype: Any) -> bool:
    from qwen_image_server.engine import speedups
    from qwen_image_server.errors import QwenImageError

    try:
        speedups.check_speedups(bench.default_settings.model_copy(update={"attention_backend": backend}), device, dtype)
    except QwenImageError:
        return False
    return True


class Progress:
    """Prints each row as its last round finishes and writes the record so far (`--json`)."""

    def __init__(self, args: argparse.Namespace, rows: dict[tuple[str, str], Row]) -> None:
        self.args, self.rows = args, rows
        print(_heading(args), flush=True)

    def done(self, row: Row) -> None:
        cells = _cells(row, None)
        widths = [9, 11, 8, 8, 8, 0, 7]
        line = [cells[0].ljust(9), *(cell.rjust(width) for cell, width in zip(cells[1:-1], widths[1:], strict=True))]
        print("row " + "  ".join([*line, cells[-1]]), flush=True)
        if self.args.json is not None:
            finished = [row for row in self.rows.values() if row.samples or row.note]
            record = {**_record(finished, self.args), "partial": True}
            self.args.json.write_text(json.dumps(record, sort_keys=True, default=str) + "\n")


def benchmark(args: argparse.Namespace) -> list[Row]:
    bench = Bench(args)
    modes = [*MODES, *([LONG] if args.long_steps else [])]
    rows = {(variant, mode): Row(variant, mode, args.long_steps if mode == LONG else args.steps)
            for variant in args.variants for mode in modes
            if mode != LONG or variant not in ("stock", "two_pass")}  # fmt: skip
    progress = Progress(args, rows)
    turns = [variant for variant in TURNS if variant in args.variants]
    # Warm-up: every shape the turns run (batches 1, 2 and 2x--batch; CFG in one call or two) once.
    warm = [("default", mode) for mode in MODES] + [(variant, "single") for variant in turns if variant != "default"]
    note(f"warming up: {', '.join(f'{variant} {mode}' for variant, mode in warm)}")
    for variant, mode in warm:
        bench.measure(variant, mode)
    for number in range(args.rounds):
        note(f"round {number + 1} of {args.rounds}")
        for variant in turns:
            for mode in MODES:
                _sample(bench, rows[(variant, mode)], progress, last=number == args.rounds - 1)
    if ("default", LONG) in rows:
        _sample(bench, rows[("default", LONG)], progress, last=True)
    for variant in (v for v in CUMULATIVE if v in args.variants):
        _cumulative(bench, variant, rows, args.rounds, progress)
    return list(rows.values())


def _sample(bench: Bench, row: Row, progress: Progress, *, last: bool) -> None:
    bench.reset_peak()
    row.samples.append(bench.measure(row.variant, row.mode))
    row.peak_gb = bench.peak_gb()
    if last:
        progress.done(row)


def _cumulative(bench: Bench, variant: str, rows: dict[tuple[str, str], Row], rounds: int, progress: Progress) -> None:
    from qwen_image_server.errors import QwenImageError

    note(variant)
    mine = [row for (name, _), row in rows.items() if name == variant]
    try:
        settings, detail = variant_settings(bench, variant)
        started = time.perf_counter()
        bench.use(settings)
        for mode in MODES:  # warm-up: compilation and autotuning happen here
            bench.measure(variant, mode)
        detail += f"; load and warm-up {time.perf_counter() - started:.0f} s"
    except (Unavailable, QwenImageError) as exc:
        _all_noted(mine, f"skipped: {exc}", progress)
        return
    except Exception as exc:
        _all_noted(mine, f"failed: {type(exc).__name__}: {str(exc)[:200]}", progress)
        return
    for row in mine:
        row.note = detail
    try:
        for number in range(rounds):
            for mode in MODES:
                _sample(bench, rows[(variant, mode)], progress, last=number == rounds - 1)
        if (variant, LONG) in rows:
            _sample(bench, rows[(variant, LONG)], progress, last=True)
    except Exception as exc:
        _all_noted([row for row in mine if not row.samples], f"failed: {type(exc).__name__}: {str(exc)[:200]}",
                   progress)  # fmt: skip


def _all_noted(rows: list[Row], why: str, progress: Progress) -> None:
    for row in rows:
        row.note = why
        progress.done(row)


HEADERS = ["variant", "mode", "s/image", "images/s", "ms/step", "x stock", "peak GB", "note"]


def _heading(args: argparse.Namespace) -> str:
    return (f"engine at {args.size}x{args.size}, {args.steps} steps, CFG 4.0, batch {args.batch}, "
            f"{args.rounds} rounds, {args.device} {args.dtype}")  # fmt: skip


def _cells(row: Row, stock: Row | None) -> list[str]:
    per_image = row.seconds_per_image
    versus = stock.seconds_per_image / per_image if stock and stock.seconds_per_image and per_image else None
    mode = f"single@{row.steps}" if row.mode == LONG else row.mode
    return [row.variant, mode, _fmt(per_image, "{:.3f}"), _fmt(1 / per_image if per_image else None, "{:.2f}"),
            _fmt(row.step_ms, "{:.1f}"), _fmt(versus, "{:.2f}"), _fmt(row.peak_gb, "{:.1f}"), row.note]  # fmt: skip


def _record(rows: list[Row], args: argparse.Namespace) -> dict[str, Any]:
    keys = ("size", "steps", "long_steps", "batch", "rounds", "device", "dtype", "tiny")
    return {
        "machine": machine(),
        "settings": {key: getattr(args, key) for key in keys},
        "rows": [
            {
                "variant": row.variant,
                "mode": row.mode,
                "steps": row.steps,
                "seconds_per_image": row.seconds_per_image,
                "step_ms": row.step_ms,
                "peak_gb": row.peak_gb,
                "note": row.note,
            }
            for row in rows
        ],
    }


def report(rows: list[Row], args: argparse.Namespace) -> float:
    by = {(row.variant, row.mode): row for row in rows}
    default = by[("default", "single")].seconds_per_image if ("default", "single") in by else None
    measured = [row for row in rows if row.seconds_per_image is not None and row.steps == args.steps]
    best = min(measured, key=lambda row: row.seconds_per_image or 0.0)
    best_seconds = best.seconds_per_image or 0.0
    speedup = round(default / best_seconds, 3) if default and best_seconds else 0.0
    stock = by.get(("stock", "single"))
    print(_heading(args))
    print(table(HEADERS, [_cells(row, stock) for row in rows]))
    print(f"best: {best.variant} {best.mode}, {best_seconds:.3f} s/image")
    record = {**_record(rows, args), "best": {"variant": best.variant, "mode": best.mode}}
    emit(record, ("engine_speedup", speedup), args.json)
    return speedup


def _fmt(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, help="denoising steps [20; --tiny 50, the models' default]")
    parser.add_argument("--long-steps", type=int, default=0, help="also one image at this many steps [off]")
    parser.add_argument("--batch", type=int, default=4, help="images of the batch modes [4]")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per variant and mode [3]")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"a subset of {','.join(VARIANTS)}")
    add_engine_options(parser)
    args = parser.parse_args(argv)
    settle_engine_options(parser, args)
    args.steps = args.steps or (50 if args.tiny else 20)
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "default" not in variants:
        parser.error(f"variants must include default and come from {', '.join(VARIANTS)}")
    if args.long_steps and args.long_steps < 2:
        parser.error("--long-steps must be at least 2")
    args.variants = sorted(variants, key=VARIANTS.index)
    quiet_libraries()
    return report(benchmark(args), args)


if __name__ == "__main__":
    main()
