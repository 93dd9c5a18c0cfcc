"""Each acceleration level (`none`, `regular`, `high`) against `none`: the work it skips, its speed
and how close its picture stays, through `Engine.render` (engine/acceleration.py).

Per level, one request (CFG 4.0, `--images` images, seeds from 1), rounds taking turns level by
level: transformer calls and block computations per image (counted with forward hooks: a block the
cache skips never runs its attention), seconds per image (median of the rounds), and the pictures'
distance from `none`'s of the same seeds: mean absolute difference of the 8-bit pixels and PSNR (dB;
`inf` for identical pictures). The last line is `acceleration_speedup=X`: `none`'s seconds per image
over `high`'s.

The tiny model's random weights move the first block's output far more per step than a trained
model's, so the shipped thresholds (tuned for the real model) skip little there; `--thresholds
regular=0.3,high=0.6` runs the levels at other First Block Cache thresholds to see the mechanism's
cost and effect on it. Without `--tiny` the full-size model with random weights runs on the GPU:
the seconds per skipped block are real, how many blocks are skipped is not the real model's.

`--lightning` makes `high` the Lightning plan (setting `lightning_loras`): a random LoRA of the
transformer's shapes (rank 64; rank 4 with `--tiny`) at `--lightning-steps` steps without CFG. Its
time per image is real (a few steps of the transformer with an adapter); its distance from `none`
means nothing (random adapter weights), so the table marks it.

    .venv/bin/python bench/acceleration.py --tiny                     # ~1 min on the CPU
    .venv/bin/python bench/acceleration.py --tiny --thresholds regular=0.3,high=0.6
    .venv/bin/python bench/acceleration.py --tiny --lightning
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/acceleration.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine, note, quiet_libraries, table
from bench.full_size import (
    add_engine_options,
    engine_settings,
    random_lora_file,
    settle_engine_options,
    use_full_size_components,
)

LEVELS = ("none", "regular", "high")
PROMPT = "a red fox in fresh snow, morning light"


@dataclass
class Level:
    name: str
    threshold: float | None
    lightning_steps: int | None = None
    seconds: list[float] = field(default_factory=list)
    transformer_calls: int = 0
    block_computations: int = 0
    images: int = 0
    pictures: list[Any] = field(default_factory=list)
    mad: float | None = None
    psnr: float | None = None

    @property
    def seconds_per_image(self) -> float:
        return statistics.median(self.seconds) / self.images


class Counters:
    """Transformer calls and block computations, counted by forward hooks on the transformer."""

    def __init__(self, transformer: Any) -> None:
        self.calls = 0
        self.blocks = 0
        self.block_count = len(transformer.transformer_blocks)
        transformer.register_forward_pre_hook(self._call)
        for block in transformer.transformer_blocks:
            block.attn.register_forward_pre_hook(self._block)  # a skipped block returns before its attention

    def _call(self, *_: Any) -> None:
        self.calls += 1

    def _block(self, *_: Any) -> None:
        self.blocks += 1

    def reset(self) -> None:
        self.calls = self.blocks = 0


def run(args: argparse.Namespace) -> list[Level]:
    import numpy as np

    from qwen_image_server.domain import Acceleration, GenerationRequest
    from qwen_image_server.engine import Engine, acceleration

    if not args.tiny:
        import torch

        use_full_size_components(torch.device(args.device), getattr(torch, args.dtype), args.layers)
    for name, threshold in args.thresholds.items():
        level = Acceleration(name)
        acceleration.PLANS[level] = acceleration.AccelerationPlan(level, threshold)
    settings = engine_settings(args)
    if args.lightning:
        lightning = random_lora_file(Path(tempfile.mkdtemp(prefix="lightning-")), 0, args)
        chosen = {"lightning_loras": f"qwen-image={lightning}", "lightning_steps": args.lightning_steps}
        settings = engine_settings(args, **chosen)
    levels = [Level(name, acceleration.PLANS[Acceleration(name)].first_block_cache_threshold) for name in LEVELS]
    if args.lightning:
        levels[-1] = Level("high", None, lightning_steps=args.lightning_steps)
    engine = Engine(settings)
    counters = Counters(engine.pipeline(engine.settings.models[0]).transformer)

    def render(level: Level) -> list[Any]:
        asked = GenerationRequest.create(model="qwen-image", prompt=PROMPT, width=args.size, height=args.size,
                                         num_inference_steps=args.steps, seed=1, true_cfg_scale=4.0,
                                         num_images_per_prompt=args.images, acceleration=level.name)  # fmt: skip
        return [np.asarray(picture.picture.convert("RGB"), dtype=np.float64) for picture in engine.render(asked)]

    note("warming up")
    render(levels[0])
    for number in range(args.rounds):
        note(f"round {number + 1} of {args.rounds}")
        for level in levels:
            counters.reset()
            started = time.perf_counter()
            pictures = render(level)
            level.seconds.append(time.perf_counter() - started)
            level.transformer_calls, level.block_computations = counters.calls, counters.blocks
            level.images, level.pictures = len(pictures), pictures
    reference = levels[0].pictures
    for level in levels:
        level.mad, level.psnr = similarity(level.pictures, reference)
    args.block_count = counters.block_count
    return levels


def similarity(pictures: list[Any], reference: list[Any]) -> tuple[float, float]:
    """Mean absolute difference of the 8-bit pixels, and PSNR in dB (inf when identical)."""
    import numpy as np

    difference = np.stack(pictures) - np.stack(reference)
    mse = float((difference**2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    return float(np.abs(difference).mean()), psnr


def report(levels: list[Level], args: argparse.Namespace) -> float:
    none = levels[0]
    print(f"acceleration at {args.size}x{args.size}, {args.steps} steps, CFG 4.0 as one call, {args.images} image(s), "
          f"{args.rounds} rounds, {args.device} {args.dtype}, {args.block_count} blocks")  # fmt: skip
    rows = []
    for level in levels:
        runs = "-" if level.threshold is None else f"cache {level.threshold:g}"
        runs = f"lightning, {level.lightning_steps} steps" if level.lightning_steps else runs
        rows.append([level.name, runs,
                     f"{level.transformer_calls / level.images:.0f}", f"{level.block_computations / level.images:.0f}",
                     f"{level.block_computations / none.block_computations:.2f}", f"{level.seconds_per_image:.3f}",
                     f"{none.seconds_per_image / level.seconds_per_image:.2f}",
                     f"{level.mad:.2f}" + ("*" if level.lightning_steps else ""),
                     f"{level.psnr:.1f}"])  # fmt: skip
    print(table(["level", "runs", "calls/image", "blocks/image", "x blocks", "s/image", "speedup",
                 "MAD vs none", "PSNR dB"], rows))  # fmt: skip
    if args.lightning:
        print("* a random Lightning stand-in: its distance from none says nothing of the real adapter's quality")
    high = levels[-1]
    speedup = round(none.seconds_per_image / high.seconds_per_image, 3)
    keys = ("size", "steps", "images", "rounds", "device", "dtype", "tiny", "block_count", "lightning")
    record = {
        "machine": machine(),
        "settings": {key: getattr(args, key) for key in keys},
        "levels": [
            {
                "level": level.name,
                "threshold": level.threshold,
                "lightning_steps": level.lightning_steps,
                "transformer_calls_per_image": level.transformer_calls / level.images,
                "block_computations_per_image": level.block_computations / level.images,
                "seconds_per_image": level.seconds_per_image,
                "mean_abs_pixel_difference": level.mad,
                "psnr_db": None if math.isinf(level.psnr or 0.0) else level.psnr,
            }
            for level in levels
        ],
    }
    emit(record, ("acceleration_speedup", speedup), args.json)
    return speedup


def _thresholds(text: str) -> dict[str, float]:
    chosen: dict[str, float] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, _, value = part.partition("=")
        if name not in LEVELS[1:]:
            raise argparse.ArgumentTypeError(f"thresholds are for regular and high, got {name!r}")
        chosen[name] = float(value)
    return chosen


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=50, help="denoising steps [50, the models' default]")
    parser.add_argument("--images", type=int, default=1, help="images of the request [1]")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per level [3]")
    parser.add_argument("--thresholds", type=_thresholds, default={}, help="e.g. regular=0.3,high=0.6")
    parser.add_argument("--lightning", action="store_true", help="high = a Lightning LoRA (a random stand-in)")
    parser.add_argument("--lightning-steps", type=int, default=8, help="the Lightning steps [8]")
    add_engine_options(parser)
    args = parser.parse_args(argv)
    settle_engine_options(parser, args)
    quiet_libraries()
    return report(run(args), args)


if __name__ == "__main__":
    main()
