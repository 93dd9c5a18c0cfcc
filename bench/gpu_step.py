"""The full-size Qwen-Image transformer on a GPU: one denoising step with CFG, timed.

Builds the real-size `QwenImageTransformer2DModel` (60 dual-stream blocks, 24 heads x 128, hidden
3072; 20.4 B parameters, random weights: timing does not depend on them) in bfloat16 on CUDA, and
times one denoising step with true CFG (a conditional and an unconditional forward) at 1024x1024
and 1328x1328 with a 128-token prompt: the median of many steps after warm-up, measured with CUDA
events, plus the peak memory. Each time is set against the step's FLOP count (`step_flops`: about
141 and 263 TFLOP) and against the bf16 matmul rate this GPU reaches in the same run.

Then the same step with each speed-up, cumulatively, in this order:
- `sequential`: CFG as two calls of batch 1, as diffusers' QwenImagePipeline runs it (the baseline);
- `batched`: CFG as one call of batch 2;
- `attention`: + the fastest attention backend available (diffusers' `set_attention_backend`:
  cuDNN SDPA, FlashAttention 2/3, SageAttention; whichever are installed);
- `compiled`: + `torch.compile` of the repeated blocks (`compile_repeated_blocks`);
- `fp8`: + FP8 weights and activations (torchao's dynamic float8 quantisation; SM 8.9+).
A speed-up that is not available here (a package missing, a GPU too old) is reported as skipped,
one that fails (a compiler error) as failed; the run goes on.

On a CUDA machine, one command (about 10 minutes with compilation; 41 GB of weights, so an
80 GB card):

    .venv/bin/python bench/gpu_step.py [--sizes 1024,1328] [--iters 20] [--json PATH]

Without a GPU, `--tiny` runs the same code with a 2-block model on the CPU (tests/bench/ does).
The last line is the headline alone: the best variant's achieved TFLOP/s at 1328x1328,
`gpu_step_tflops=512.3`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/gpu_step.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine, note, table

PROMPT_TOKENS = 128  # a typical prompt after the pipeline drops its template prefix
VAE_SCALE = 8  # pixels per latent
PATCH = 2  # latents per image token, each way: one token per 16x16 pixels
LATENT_CHANNELS = 16
VARIANTS = ("sequential", "batched", "attention", "compiled", "fp8")
ATTENTION_BACKENDS = ("_native_cudnn", "_flash_3", "flash", "sage")


@dataclass(frozen=True)
class TransformerShape:
    """The sizes of a QwenImageTransformer2DModel (diffusers' argument names)."""

    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    joint_attention_dim: int  # the text encoder's hidden size
    axes_dims_rope: tuple[int, int, int]
    mlp_ratio: int = 4  # FeedForward's default

    @property
    def hidden(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def model_arguments(self) -> dict[str, Any]:
        return {
            "patch_size": PATCH,
            "in_channels": LATENT_CHANNELS * PATCH * PATCH,
            "out_channels": LATENT_CHANNELS,
            "num_layers": self.num_layers,
            "attention_head_dim": self.attention_head_dim,
            "num_attention_heads": self.num_attention_heads,
            "joint_attention_dim": self.joint_attention_dim,
            "axes_dims_rope": self.axes_dims_rope,
        }


FULL = TransformerShape(60, 24, 128, 3584, (16, 56, 56))  # Qwen/Qwen-Image's transformer config
TINY = TransformerShape(2, 2, 16, 32, (4, 6, 6))  # as engine/tiny.py: runs anywhere in a second


def image_tokens(height: int, width: int) -> int:
    return (height // (VAE_SCALE * PATCH)) * (width // (VAE_SCALE * PATCH))


def forward_flops(shape: TransformerShape, height: int, width: int, text_tokens: int = PROMPT_TOKENS) -> float:
    """FLOPs of one forward of batch 1 (2 per multiply-add; matrix products only: norms, RoPE,
    activations and softmax are a few percent more, not counted, as is usual)."""
    d, image, text = shape.hidden, image_tokens(height, width), text_tokens
    tokens = image + text
    # Per block and token of either stream: q, k, v and out projections (4 d^2) and the MLP
    # (2 * ratio * d^2); joint attention over all tokens: QK^T and AV (2 * tokens^2 * d);
    # the modulation of each stream from the timestep embedding (2 * 6 d^2, per sample).
    per_block = tokens * (4 + 2 * shape.mlp_ratio) * d * d + 2 * tokens * tokens * d + 2 * 6 * d * d
    embed = image * (LATENT_CHANNELS * PATCH * PATCH) * d + text * shape.joint_attention_dim * d
    head = image * d * (LATENT_CHANNELS * PATCH * PATCH) + d * 2 * d  # proj_out and norm_out's modulation
    return 2.0 * (shape.num_layers * per_block + embed + head)


def step_flops(shape: TransformerShape, height: int, width: int, text_tokens: int = PROMPT_TOKENS) -> float:
    """FLOPs of one denoising step with true CFG: two forwards (conditional and unconditional)."""
    return 2 * forward_flops(shape, height, width, text_tokens)


# -- timing -----------------------------------------------------------------------------------------


class Clock:
    """Times a call: CUDA events on a GPU (the kernels' own time, not the launch), else wall time."""

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.cuda = torch.device(device).type == "cuda"

    def time(self, call: Callable[[], object], *, warmup: int, iters: int) -> list[float]:
        """Seconds per call, `iters` times, after `warmup` untimed calls."""
        for _ in range(warmup):
            call()
        self.synchronize()
        return [self._once(call) for _ in range(iters)]

    def _once(self, call: Callable[[], object]) -> float:
        if not self.cuda:
            start = time.perf_counter()
            call()
            return time.perf_counter() - start
        begin, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
        begin.record()
        call()
        end.record()
        end.synchronize()
        return float(begin.elapsed_time(end)) / 1000

    def synchronize(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()


def matmul_rate(device: Any, dtype: Any, *, n: int, warmup: int, iters: int) -> float:
    """FLOP/s of an n x n x n matrix product in `dtype` on `device` (median of `iters`)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    with torch.inference_mode():
        seconds = Clock(device).time(lambda: torch.matmul(a, b), warmup=warmup, iters=iters)
    return 2 * n**3 / statistics.median(seconds)


# -- the model and one step ---------------------------------------------------------------------------


@contextlib.contextmanager
def default_dtype(dtype: Any) -> Iterator[None]:
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_transformer(shape: TransformerShape, device: Any, dtype: Any) -> Any:
    """The transformer with random weights, made directly on `device` in `dtype` (the full model
    never exists in float32 or on the CPU: 82 GB)."""
    import torch
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        model = QwenImageTransformer2DModel(**shape.model_arguments())
    return model.eval().requires_grad_(False)


@dataclass
class StepInputs:
    """One denoising step's inputs for the conditional and the unconditional prompt."""

    latents: Any  # (1, image tokens, 64)
    prompt: Any  # (1, text tokens, joint_attention_dim)
    negative: Any
    timestep: Any  # (1,)
    img_shapes: list[list[tuple[int, int, int]]]

    @classmethod
    def random(cls, shape: TransformerShape, height: int, width: int, device: Any, dtype: Any) -> StepInputs:
        import torch

        generator = torch.Generator(device="cpu").manual_seed(1)

        def noise(*size: int) -> Any:
            return torch.randn(*size, generator=generator).to(device=device, dtype=dtype)

        grid = (1, height // (VAE_SCALE * PATCH), width // (VAE_SCALE * PATCH))
        return cls(
            latents=noise(1, image_tokens(height, width), LATENT_CHANNELS * PATCH * PATCH),
            prompt=noise(1, PROMPT_TOKENS, shape.joint_attention_dim),
            negative=noise(1, PROMPT_TOKENS, shape.joint_attention_dim),
            timestep=torch.full((1,), 0.5, device=device, dtype=dtype),
            img_shapes=[[grid]],
        )


def cfg_sequential(model: Any, inputs: StepInputs) -> tuple[Any, Any]:
    """The conditional and unconditional predictions as diffusers' pipeline makes them: two calls.
    (No text mask: the pipeline drops it when the prompt has no padding, as here.)"""
    arguments = {"hidden_states": inputs.latents, "timestep": inputs.timestep, "img_shapes": inputs.img_shapes}
    conditional = model(encoder_hidden_states=inputs.prompt, return_dict=False, **arguments)[0]
    unconditional = model(encoder_hidden_states=inputs.negative, return_dict=False, **arguments)[0]
    return conditional, unconditional


def cfg_batched(model: Any, inputs: StepInputs) -> tuple[Any, Any]:
    """The same two predictions from one call of batch 2 (prompts of equal length: no padding)."""
    import torch

    both = model(
        hidden_states=inputs.latents.expand(2, -1, -1),
        encoder_hidden_states=torch.cat([inputs.prompt, inputs.negative]),
        timestep=inputs.timestep.expand(2),
        img_shapes=inputs.img_shapes * 2,
        return_dict=False,
    )[0]
    return both[0:1], both[1:2]


def guided(conditional: Any, unconditional: Any, scale: float = 4.0) -> Any:
    """True CFG as the pipeline combines the predictions (norm-rescaled)."""
    import torch

    combined = unconditional + scale * (conditional - unconditional)
    return combined * (torch.norm(conditional, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))


# -- the variants -------------------------------------------------------------------------------------

CfgCall = Callable[[Any, StepInputs], tuple[Any, Any]]


@dataclass
class Run:
    """One benchmark run: the model (changed in place by each variant), what to time, the results."""

    model: Any
    shape: TransformerShape
    sizes: list[int]
    device: Any
    dtype: Any
    warmup: int
    iters: int
    rows: list[Row] = field(default_factory=list)
    cfg: CfgCall = cfg_sequential

    @property
    def clock(self) -> Clock:
        return Clock(self.device)

    def step(self, inputs: StepInputs) -> Any:
        import torch

        with torch.inference_mode():
            return guided(*self.cfg(self.model, inputs))

    def inputs(self, size: int) -> StepInputs:
        return StepInputs.random(self.shape, size, size, self.device, self.dtype)


@dataclass(frozen=True)
class Row:
    variant: str
    size: int
    seconds: float | None  # median per step; None when skipped
    flops: float
    peak_bytes: int | None
    warmup_seconds: float | None  # the untimed first calls (compilation shows here)
    note: str = ""

    @property
    def tflops(self) -> float | None:
        return None if self.seconds is None else self.flops / self.seconds / 1e12


def prepare(run: Run, variant: str) -> str:
    """Apply `variant` to the run (cumulatively, in place); returns what was done. Raises
    `Unavailable` when this machine cannot run it."""
    if variant == "sequential":
        run.cfg = cfg_sequential
        return "CFG as 2 calls of batch 1"
    if variant == "batched":
        run.cfg = cfg_batched
        return "CFG as 1 call of batch 2"
    if variant == "attention":
        return choose_attention_backend(run)
    if variant == "compiled":
        run.model.compile_repeated_blocks(fullgraph=True)
        return "torch.compile of the 60 repeated blocks" if run.shape == FULL else "torch.compile of the blocks"
    if variant == "fp8":
        return quantize_fp8(run)
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


class Unavailable(Exception):
    """This machine cannot run a variant (a package missing, a GPU too old); reported, not fatal."""


def choose_attention_backend(run: Run) -> str:
    """Time one step with each attention backend that works here (native SDPA included) at the
    largest size and keep the fastest."""
    inputs = run.inputs(max(run.sizes))
    timings: dict[str, float] = {}
    for backend in ("native", *ATTENTION_BACKENDS):
        try:
            run.model.set_attention_backend(backend)
            seconds = run.clock.time(lambda: run.step(inputs), warmup=1, iters=max(2, run.iters // 4))
        except Exception as exc:  # a backend whose package or hardware is missing: try the next
            note(f"  attention backend {backend}: unavailable ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        timings[backend] = statistics.median(seconds)
        note(f"  attention backend {backend}: {timings[backend] * 1000:.1f} ms/step")
    if not timings:
        raise Unavailable("no attention backend ran")
    best = min(timings, key=timings.__getitem__)
    run.model.set_attention_backend(best)
    tried = ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in timings.items())
    return f"attention backend {best} (tried: {tried})"


def quantize_fp8(run: Run) -> str:
    """FP8 weights and per-token FP8 activations for the blocks' linear layers (torchao)."""
    import torch

    if Clock(run.device).cuda is False or torch.cuda.get_device_capability(run.device) < (8, 9):
        raise Unavailable("FP8 matmuls need a CUDA GPU of compute capability 8.9 or newer")
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError as exc:
        raise Unavailable(f"torchao is not installed ({exc}); pip install torchao") from None
    for block in run.model.transformer_blocks:
        quantize_(block, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    return "FP8 (torchao, per-row scales) in every block's linear layers"


def measure(run: Run, variant: str, detail: str) -> None:
    import torch

    for size in run.sizes:
        inputs = run.inputs(size)
        flops = step_flops(run.shape, size, size)
        if run.clock.cuda:
            torch.cuda.reset_peak_memory_stats(run.device)
        started = time.perf_counter()
        run.clock.time(lambda inputs=inputs: run.step(inputs), warmup=run.warmup, iters=0)
        warmup_seconds = time.perf_counter() - started
        timed = run.clock.time(lambda inputs=inputs: run.step(inputs), warmup=0, iters=run.iters)
        seconds = statistics.median(timed)
        peak = int(torch.cuda.max_memory_allocated(run.device)) if run.clock.cuda else None
        run.rows.append(Row(variant, size, seconds, flops, peak, warmup_seconds, detail))
        note(f"{variant} {size}x{size}: {seconds * 1000:.1f} ms/step, {flops / seconds / 1e12:.1f} TFLOP/s")


def _not_measured(run: Run, variant: str, why: str) -> None:
    note(f"{variant}: {why}")
    run.rows.extend(Row(variant, size, None, step_flops(run.shape, size, size), None, None, why) for size in run.sizes)


def batched_matches_sequential(run: Run, size: int) -> float:
    """The largest difference between CFG batched and CFG as two calls, relative to the output's
    scale: the two must make the same step (up to rounding)."""
    import torch

    inputs = run.inputs(size)
    with torch.inference_mode():
        one = guided(*cfg_sequential(run.model, inputs)).float()
        two = guided(*cfg_batched(run.model, inputs)).float()
    return float((one - two).abs().max() / one.abs().max().clamp_min(1e-12))


def benchmark(
    shape: TransformerShape,
    sizes: list[int],
    variants: list[str],
    *,
    device: str,
    dtype: Any,
    warmup: int,
    iters: int,
    matmul_n: int,
) -> dict[str, Any]:
    """Everything the script reports, as one record (rows are `Row`s)."""
    rate = matmul_rate(device, dtype, n=matmul_n, warmup=warmup, iters=iters)
    note(f"{dtype} matmul {matmul_n}^3: {rate / 1e12:.1f} TFLOP/s")
    run = Run(build_transformer(shape, device, dtype), shape, sizes, device, dtype, warmup, iters)
    parameters = sum(p.numel() for p in run.model.parameters())
    difference = batched_matches_sequential(run, min(sizes))
    for variant in variants:
        try:
            detail = prepare(run, variant)
        except Unavailable as exc:
            _not_measured(run, variant, f"skipped: {exc}")
            continue
        measured = len(run.rows)
        try:
            measure(run, variant, detail)
        except Exception as exc:  # e.g. a compiler or kernel error: keep the figures measured so far
            del run.rows[measured:]
            _not_measured(run, variant, f"failed: {type(exc).__name__}: {str(exc)[:200]}")
    return {"matmul_flops": rate, "parameters": parameters, "cfg_batched_relative_difference": difference,
            "rows": run.rows}  # fmt: skip


# -- report -------------------------------------------------------------------------------------------


def report(result: dict[str, Any], args: argparse.Namespace, device_name: str) -> float:
    rate: float = result["matmul_flops"]
    rows: list[Row] = result["rows"]
    print(f"{device_name}: {args.dtype} matmul {rate / 1e12:.1f} TFLOP/s; model {result['parameters'] / 1e9:.2f} B "
          f"parameters; CFG batched vs 2 calls: {result['cfg_batched_relative_difference']:.1e} relative")  # fmt: skip
    printed = []
    for row in rows:
        tflops = row.tflops
        printed.append((row.variant, f"{row.size}x{row.size}", _or_dash(row.seconds, 1000, "{:.1f}"),
                        f"{row.flops / 1e12:.3g}", _or_dash(tflops, 1, "{:.3g}"),
                        _or_dash(None if tflops is None else tflops * 1e12 / rate, 100, "{:.0f}%"),
                        _or_dash(row.peak_bytes, 2**-30, "{:.1f}"), row.note))  # fmt: skip
    print(table(["variant", "size", "ms/step", "TFLOP", "TFLOP/s", "of matmul", "peak GiB", "what"], printed))
    largest = max(row.size for row in rows)
    measured = [row.tflops for row in rows if row.size == largest and row.tflops is not None]
    headline = round(max(measured), 1) if measured else 0.0
    record = {
        "benchmark": "gpu_step",
        "device": device_name,
        "config": {
            "shape": "tiny" if args.tiny else "full",
            "sizes": args.sizes,
            "dtype": args.dtype,
            "warmup": args.warmup,
            "iters": args.iters,
            "prompt_tokens": PROMPT_TOKENS,
        },
        "matmul_tflops": _significant(rate / 1e12),
        "parameters": result["parameters"],
        "cfg_batched_relative_difference": result["cfg_batched_relative_difference"],
        "rows": [
            {
                "variant": row.variant,
                "size": row.size,
                "ms": None if row.seconds is None else round(row.seconds * 1000, 2),
                "tflop": _significant(row.flops / 1e12),
                "tflops": None if row.tflops is None else _significant(row.tflops),
                "of_matmul": None if row.tflops is None else _significant(row.tflops * 1e12 / rate),
                "peak_gib": None if row.peak_bytes is None else round(row.peak_bytes / 2**30, 2),
                "warmup_s": None if row.warmup_seconds is None else round(row.warmup_seconds, 1),
                "note": row.note,
            }
            for row in rows
        ],
        "machine": machine(),
    }
    emit(record, ("gpu_step_tflops", headline), args.json)
    return headline


def _significant(value: float, digits: int = 4) -> float:
    """Rounded to `digits` significant digits (the tiny model's TFLOP are 1e-5, the full's 100s)."""
    return float(f"{value:.{digits}g}")


def _or_dash(value: float | None, scale: float, form: str) -> str:
    return "-" if value is None else form.format(value * scale)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1024,1328", help="comma-separated square sizes [1024,1328]")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"cumulative, in order [{','.join(VARIANTS)}]")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant and size [3]")
    parser.add_argument("--iters", type=int, default=20, help="timed steps per variant and size [20]")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="cuda", help="a torch device [cuda]")
    parser.add_argument("--tiny", action="store_true", help="a 2-block model on the CPU, small sizes: checks the logic")
    parser.add_argument("--json", type=Path, help="also write the JSON record here")
    args = parser.parse_args(argv)
    import torch

    if args.tiny:
        args.device, args.dtype = ("cpu", "float32") if args.device == "cuda" else (args.device, args.dtype)
        args.sizes = args.sizes if args.sizes != "1024,1328" else "64,128"
    elif torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; run with --tiny to check the script on the CPU")
    sizes = [int(size) for size in args.sizes.split(",")]
    if any(size % (VAE_SCALE * PATCH) for size in sizes):
        parser.error(f"sizes must be multiples of {VAE_SCALE * PATCH}")
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    variants.sort(key=VARIANTS.index)
    device_name = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else "cpu"
    result = benchmark(TINY if args.tiny else FULL, sizes, variants, device=args.device,
                       dtype=getattr(torch, args.dtype), warmup=args.warmup, iters=args.iters,
                       matmul_n=256 if args.tiny else 8192)  # fmt: skip
    return report(result, args, device_name)


if __name__ == "__main__":
    main()
