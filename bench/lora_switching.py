"""What LoRA adapters cost per image: fused, active per request, switched between requests.

One engine per configuration, requests of one image rendered one after another (`Engine.render`):

- `plain`: no adapter (the reference);
- `fused`: one server adapter (`loras`), fused into the weights at load: should cost nothing;
- `same`: a request adapter (`request_loras`), the same one every request: the unfused adapter's
  per-step cost (its low-rank product at every layer it touches), and the set/reset around a call;
- `switching`: a request whose adapter is not the one of the request before (both loaded), timed
  interleaved with `same` (a, a, b, b, ...): what a switch costs on top of `same`;
- `first use`: the first request that names an adapter, which reads its file and injects its layers.

Seconds per image are medians of `--rounds`; `overhead` is the difference from `plain` in ms. The
last line is `lora_switch_ms=X`: `switching` minus `same`, per request. Without `--tiny`, the
full-size model with random weights and rank-64 random adapters runs on the GPU.

    .venv/bin/python bench/lora_switching.py --tiny       # ~1 min on the CPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/lora_switching.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine, note, quiet_libraries, table
from bench.full_size import (
    add_engine_options,
    engine_settings,
    random_lora_file,
    settle_engine_options,
    use_full_size_components,
)

PROMPT = "a red fox in fresh snow, morning light"


def measure(args: argparse.Namespace, folder: Path) -> dict[str, float]:
    from qwen_image_server.domain import GenerationRequest
    from qwen_image_server.engine import Engine

    if not args.tiny:
        import torch

        use_full_size_components(torch.device(args.device), getattr(torch, args.dtype), args.layers)
    a, b = random_lora_file(folder, 1, args), random_lora_file(folder, 2, args)

    def request(*names: str) -> GenerationRequest:
        return GenerationRequest.create(model="qwen-image", prompt=PROMPT, width=args.size, height=args.size,
                                        num_inference_steps=args.steps, seed=1, true_cfg_scale=4.0,
                                        loras=[{"name": name} for name in names])  # fmt: skip

    def timed(engine: Engine, asked: GenerationRequest) -> float:
        started = time.perf_counter()
        engine.render(asked)
        return time.perf_counter() - started

    seconds: dict[str, float] = {}
    for label, extra in (("plain", {}), ("fused", {"loras": f"a={a}"})):
        note(label)
        engine = Engine(engine_settings(args, **extra))
        timed(engine, request())  # load and warm up
        seconds[label] = statistics.median(timed(engine, request()) for _ in range(args.rounds))
        del engine
    note("request adapters")
    engine = Engine(engine_settings(args, request_loras=f"a={a},b={b}"))
    timed(engine, request())  # load and warm up without adapters
    seconds["first use"] = timed(engine, request("a"))
    timed(engine, request("b"))  # b loaded too
    # a, a, b, b, ...: every other request switches; interleaved, so drift touches both alike.
    same, switched = [], []
    for index in range(4 * args.rounds):
        (switched if index % 2 == 0 else same).append(timed(engine, request("ab"[index // 2 % 2])))
    seconds["same"], seconds["switching"] = statistics.median(same), statistics.median(switched)
    return seconds


def report(seconds: dict[str, float], args: argparse.Namespace) -> float:
    plain = seconds["plain"]
    print(f"LoRA adapters at {args.size}x{args.size}, {args.steps} steps, CFG 4.0, 1 image per request, "
          f"{args.rounds} rounds, {args.device} {args.dtype}")  # fmt: skip
    rows = [[label, f"{value:.3f}", f"{(value - plain) * 1000:+.0f}"] for label, value in seconds.items()]
    print(table(["configuration", "s/image", "overhead ms"], rows))
    switch_ms = round((seconds["switching"] - seconds["same"]) * 1000, 1)
    record = {"machine": machine(), "settings": vars(args) | {"json": None}, "seconds_per_image": seconds}
    emit(record, ("lora_switch_ms", switch_ms), args.json)
    return switch_ms


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=20, help="denoising steps [20]")
    parser.add_argument("--rounds", type=int, default=5, help="timed requests per configuration [5]")
    add_engine_options(parser)
    args = parser.parse_args(argv)
    settle_engine_options(parser, args)
    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as folder:
        return report(measure(args, Path(folder)), args)


if __name__ == "__main__":
    main()
