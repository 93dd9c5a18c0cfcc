"""The engine end to end (`Engine.render`: prompt encoding, denoising, VAE decoding), each speed
option on and off, side by side in one run.

Variants, the first three taking turns round by round (same process, same weights):
- `stock`: diffusers' `QwenImagePipeline` called once per image, CFG as two transformer calls: the
  engine before it had a loop of its own (the baseline);
- `two_pass`: the engine with `cfg_batching=false` (the images of a request still in one call);
- `default`: the engine as it ships (CFG as one call of twice the batch);
then cumulatively, each measured after the one before (they change the transformer for good):
- `attention`: + the fastest attention backend installed (`attention_backend`);
- `compile`: + `torch.compile` of the repeated blocks (`compile`);
- `fp8`: + FP8 dynamic quantization (`quantization=fp8`; GPUs of compute capability 8.9+).
An option that cannot run here is reported as skipped, one that fails as failed; the run goes on.

Each variant makes, per round: `single` (one request, one image), `images` (one request of
`--batch` images) and `requests` (`--batch` one-image requests in one `render_batch` call, as a
worker with `max_batch_size` does). Reported: seconds per image, images per second, the median time
of a denoising step, and on a GPU the peak memory. The last line is `engine_speedup=X`: the default
configuration's seconds per image (single) over the best row's, same run.

    .venv/bin/python bench/engine_speed.py --tiny            # the tiny model on the CPU, ~2 min
    .venv/bin/python bench/engine_speed.py --json e.json     # full size, random weights, on a GPU
"""

from __future__ import annotations

import argparse
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
    """One engine, its pipeline and the requests of each mode."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from qwen_image_server.domain import GenerationRequest
        from qwen_image_server.engine import Engine

        self.torch = torch
        self.args = args
        self.cuda = torch.device(args.device).type == "cuda"
        settings = engine_settings(args)
        if not args.tiny:
            use_full_size_components(torch.device(args.device), getattr(torch, args.dtype), args.layers)
        self.engine = Engine(settings)
        self.default_settings = settings
        self.pipeline = self.engine.pipeline(settings.models[0])

        def request(prompt: str, seed: int, images: int = 1) -> GenerationRequest:
            return GenerationRequest.create(model="qwen-image", prompt=prompt, width=args.size, height=args.size,
                                            num_inference_steps=args.steps, seed=seed, true_cfg_scale=4.0,
                                            num_images_per_prompt=images)  # fmt: skip

        self.single = request(PROMPTS[0], 1)
        self.images = request(PROMPTS[0], 1, args.batch)
        self.requests = [request(PROMPTS[i % len(PROMPTS)], i + 1) for i in range(args.batch)]

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
        self.engine.settings = self.default_settings.model_copy(update={"cfg_batching": variant != "two_pass"})
        if mode == "requests":
            outcomes = self.engine.render_batch([BatchEntry(one, on_step=on_step if i == 0 else None)
                                                 for i, one in enumerate(self.requests)])  # fmt: skip
            failed = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
            if failed:
                raise failed[0]
            return len(self.requests)
        asked = self.single if mode == "single" else self.images
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


class Unavailable(Exception):
    """An option that cannot run on this machine (reported as skipped)."""


def enable(bench: Bench, variant: str) -> str:
    """Turn on a cumulative option for the engine's transformer, through the engine's own code (the
    checks that refuse it at start, then the same call); the detail for the table."""
    from qwen_image_server.engine import attention, speedups
    from qwen_image_server.errors import QwenImageError

    transformer = bench.pipeline.transformer
    device, dtype = bench.torch.device(bench.args.device), getattr(bench.torch, bench.args.dtype)
    if variant == "attention":
        for backend in ATTENTION_BACKENDS:
            settings = bench.default_settings.model_copy(update={"attention_backend": backend})
            try:
                speedups.check_speedups(settings, device, dtype)
            except QwenImageError:
                continue
            attention.set_backend(transformer, backend)
            return f"attention backend {backend}"
        raise Unavailable("no attention backend beyond native SDPA is usable here")
    update = {"compile": True} if variant == "compile" else {"quantization": "fp8"}
    settings = bench.default_settings.model_copy(update=update)
    try:
        speedups.check_speedups(settings, device, dtype)
    except QwenImageError as exc:
        raise Unavailable(exc.message) from None
    if variant == "compile":
        speedups.compile_blocks(transformer)
        return "compile_repeated_blocks"
    speedups.quantize_fp8(transformer, settings.fp8_skip, device)
    return f"fp8 (kept in bf16: {', '.join(settings.fp8_skip)})"


def benchmark(args: argparse.Namespace) -> list[Row]:
    bench = Bench(args)
    rows = {(variant, mode): Row(variant, mode) for variant in args.variants for mode in MODES}
    turns = [variant for variant in TURNS if variant in args.variants]
    note(f"warming up {', '.join(turns)}")
    for variant in turns:
        for mode in MODES:
            bench.measure(variant, mode)
    for number in range(args.rounds):
        note(f"round {number + 1} of {args.rounds}")
        for variant in turns:
            for mode in MODES:
                bench.reset_peak()
                rows[(variant, mode)].samples.append(bench.measure(variant, mode))
                rows[(variant, mode)].peak_gb = bench.peak_gb()
    for variant in (v for v in CUMULATIVE if v in args.variants):
        _cumulative(bench, variant, rows, args.rounds)
    return list(rows.values())


def _cumulative(bench: Bench, variant: str, rows: dict[tuple[str, str], Row], rounds: int) -> None:
    note(f"{variant}")
    try:
        detail = enable(bench, variant)
        started = time.perf_counter()
        for mode in MODES:  # warm-up: compilation and autotuning happen here
            bench.measure("default", mode)
        detail += f"; warm-up {time.perf_counter() - started:.0f} s"
    except Unavailable as exc:
        for mode in MODES:
            rows[(variant, mode)].note = f"skipped: {exc}"
        return
    except Exception as exc:
        for mode in MODES:
            rows[(variant, mode)].note = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        return
    for _ in range(rounds):
        for mode in MODES:
            bench.reset_peak()
            rows[(variant, mode)].samples.append(bench.measure("default", mode))
            rows[(variant, mode)].peak_gb = bench.peak_gb()
            rows[(variant, mode)].note = detail


def report(rows: list[Row], args: argparse.Namespace) -> float:
    by = {(row.variant, row.mode): row for row in rows}
    default = by[("default", "single")].seconds_per_image if ("default", "single") in by else None
    measured = [row for row in rows if row.seconds_per_image is not None]
    best = min(measured, key=lambda row: row.seconds_per_image or 0.0)
    best_seconds = best.seconds_per_image or 0.0
    speedup = round(default / best_seconds, 3) if default and best_seconds else 0.0
    stock = by.get(("stock", "single"))
    print(f"engine at {args.size}x{args.size}, {args.steps} steps, CFG 4.0, batch {args.batch}, {args.rounds} rounds, "
          f"{args.device} {args.dtype}")  # fmt: skip
    lines = []
    for row in rows:
        per_image = row.seconds_per_image
        versus = stock.seconds_per_image / per_image if stock and stock.seconds_per_image and per_image else None
        lines.append([row.variant, row.mode, _fmt(per_image, "{:.3f}"), _fmt(1 / per_image if per_image else None,
                      "{:.2f}"), _fmt(row.step_ms, "{:.1f}"), _fmt(versus, "{:.2f}"), _fmt(row.peak_gb, "{:.1f}"),
                      row.note])  # fmt: skip
    print(table(["variant", "mode", "s/image", "images/s", "ms/step", "x stock", "peak GB", "note"], lines))
    print(f"best: {best.variant} {best.mode}, {best_seconds:.3f} s/image")
    record = {
        "machine": machine(),
        "settings": {
            key: getattr(args, key) for key in ("size", "steps", "batch", "rounds", "device", "dtype", "tiny")
        },
        "rows": [
            {
                "variant": row.variant,
                "mode": row.mode,
                "seconds_per_image": row.seconds_per_image,
                "step_ms": row.step_ms,
                "peak_gb": row.peak_gb,
                "note": row.note,
            }
            for row in rows
        ],
        "best": {"variant": best.variant, "mode": best.mode},
    }
    emit(record, ("engine_speedup", speedup), args.json)
    return speedup


def _fmt(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, help="denoising steps [20; --tiny 50, the models' default]")
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
    args.variants = sorted(variants, key=VARIANTS.index)
    quiet_libraries()
    return report(benchmark(args), args)


if __name__ == "__main__":
    main()
