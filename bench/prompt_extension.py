"""Prompt extension's cost (engine/prompt_extension.py): the pipeline's Qwen2.5-VL text encoder
writing a fuller prompt before the image is made.

Per case (`--pictures`: 0 is text-to-image, 1-3 input pictures of an edit, 640x480, shown at the
pipeline's 384x384 area) and per token budget (`--budgets`, `max_new_tokens`): one warm-up, then
`--rounds` extensions of the same prompt. Generation is held to exactly the budget
(`min_new_tokens` = `max_new_tokens`): random weights may end their turn at once, a real model
writes until its prompt is done, so the timing is for the whole budget, the worst case of a setting.
The table gives ms per extension (median, p95), tokens per second and ms per token (median); on a
GPU also the memory the extension added to the peak. The last line is `prompt_extension_ms=X`: the
median ms of the first `--pictures` case (text-to-image by default) at the largest budget (200 by
default, the module's default).

`--tiny` runs the tiny model on the CPU (checks the script; its figures are the Python and
`generate` overhead of a 2-layer model). Without it a full-size Qwen2.5-VL-7B text encoder with
random weights (bench/full_size.py; random weights time like real ones) is made on the GPU in
bf16, with Qwen2.5-VL's stock image processor settings; `--layers` shrinks its depth to check the
script on a CPU (`--device cpu`).

Measured with `--tiny` (OMP_NUM_THREADS=1, a shared 2-core CPU, load ~3.7): 69.5 ms at 50 tokens,
278.9 ms at 200 (~720 tokens/s), 82.8 / 276.3 ms with one picture. With torch's 2 threads on the same
loaded machine the 200-token figure was 2-5 s (threads fighting the other load): set the threads.

    OMP_NUM_THREADS=1 .venv/bin/python bench/prompt_extension.py --tiny   # ~10 s on 2 CPU cores
    .venv/bin/python bench/prompt_extension.py                        # GPU, full size
    .venv/bin/python bench/prompt_extension.py --device cpu --layers 1 --budgets 5 --rounds 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/prompt_extension.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Summary, emit, machine, note, quiet_libraries, table

PROMPT = "a red fox in fresh snow, morning light"
EDIT_PROMPT = "make the fox look up at a flock of birds"


@dataclass
class Case:
    pictures: int
    budget: int
    seconds: list[float] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    peak_gib: float | None = None

    @property
    def milliseconds(self) -> Summary:
        return Summary.of(self.seconds).scaled(1000)

    @property
    def tokens_per_second(self) -> float:
        rates = (tokens / seconds for tokens, seconds in zip(self.new_tokens, self.seconds, strict=True))
        return statistics.median(rates)


def components(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The text encoder, tokenizer and processor: tiny, or full size with random weights."""
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from bench.full_size import _text_encoder
    from bench.gpu_step import default_dtype
    from qwen_image_server.engine.processor import ImageOnlyQwen2VLProcessor
    from qwen_image_server.engine.tiny import build_tiny_components
    from qwen_image_server.engine.tiny_tokenizer import build_tiny_tokenizer

    if args.tiny:
        tiny = build_tiny_components()
        return tiny["text_encoder"], tiny["tokenizer"], tiny["processor"]
    tokenizer = build_tiny_tokenizer()  # prompt token counts differ a little; generation is what is timed
    with torch.device(args.device), default_dtype(getattr(torch, args.dtype)):
        encoder = _text_encoder(tokenizer, args.layers).eval().requires_grad_(False)
    processor = ImageOnlyQwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer)
    return encoder, tokenizer, processor


def run(args: argparse.Namespace) -> list[Case]:
    import torch
    from PIL import Image

    from qwen_image_server.engine.prompt_extension import extend

    encoder, tokenizer, processor = components(args)
    on_cuda = torch.device(args.device).type == "cuda"
    pictures = [Image.new("RGB", (640, 480), (40 + 60 * n, 120, 200 - 50 * n)) for n in range(3)]
    cases = [Case(count, budget) for count in args.pictures for budget in args.budgets]
    for case in cases:
        shown = pictures[: case.pictures]
        prompt = EDIT_PROMPT if shown else PROMPT

        def once(case: Case = case, shown: list[Any] = shown, prompt: str = prompt) -> Any:
            return extend(encoder, tokenizer, prompt, images=shown, processor=processor if shown else None,
                          max_new_tokens=case.budget, min_new_tokens=case.budget)  # fmt: skip

        note(f"{case.pictures} picture(s), {case.budget} tokens")
        once()  # warm-up: kernels chosen, caches allocated
        if on_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            resting = torch.cuda.memory_allocated()
        for _ in range(args.rounds):
            found = once()
            case.seconds.append(found.seconds)
            case.new_tokens.append(found.new_tokens)
        if on_cuda:
            case.peak_gib = (torch.cuda.max_memory_allocated() - resting) / 2**30
    return cases


def report(cases: list[Case], args: argparse.Namespace) -> float:
    model = "tiny model" if args.tiny else f"Qwen2.5-VL-7B random weights, {args.layers or 28} layers"
    print(f"prompt extension, {model}, {args.device} {args.dtype}, {args.rounds} rounds, greedy, "
          "generation held to the budget")  # fmt: skip
    rows = []
    for case in cases:
        ms = case.milliseconds
        rows.append([f"{case.pictures} picture(s)", case.budget, statistics.median(case.new_tokens),
                     f"{ms.median:.1f}", f"{ms.p95:.1f}", f"{case.tokens_per_second:.1f}",
                     f"{ms.median / statistics.median(case.new_tokens):.2f}",
                     "-" if case.peak_gib is None else f"{case.peak_gib:.3f}"])  # fmt: skip
    print(table(["case", "max_new_tokens", "tokens", "ms", "ms p95", "tokens/s", "ms/token", "+peak GiB"], rows))
    first, largest = args.pictures[0], max(args.budgets)
    headline = round(next(c for c in cases if (c.pictures, c.budget) == (first, largest)).milliseconds.median, 2)
    keys = ("budgets", "pictures", "rounds", "device", "dtype", "tiny", "layers")
    record = {
        "machine": machine(),
        "settings": {key: getattr(args, key) for key in keys},
        "cases": [
            {
                "pictures": case.pictures,
                "max_new_tokens": case.budget,
                "new_tokens": statistics.median(case.new_tokens),
                "ms": case.milliseconds.as_dict(),
                "tokens_per_second": round(case.tokens_per_second, 2),
                "peak_memory_added_gib": case.peak_gib,
            }
            for case in cases
        ],
    }
    emit(record, ("prompt_extension_ms", headline), args.json)
    return headline


def _counts(text: str, *, low: int, high: int) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(not low <= value <= high for value in values):
        raise argparse.ArgumentTypeError(f"comma-separated numbers from {low} to {high}, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--budgets", type=lambda text: _counts(text, low=1, high=4096), default=[50, 200],
                        help="max_new_tokens values [50,200]")  # fmt: skip
    parser.add_argument("--pictures", type=lambda text: _counts(text, low=0, high=3), default=[0, 1],
                        help="input pictures per case, 0 is text-to-image [0,1]")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, help="timed extensions per case [5]")
    parser.add_argument("--device", default="cuda", help="a torch device [cuda]")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--layers", type=int, help="full width, fewer layers (checks the script)")
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU")
    parser.add_argument("--json", type=Path, help="also write the JSON record here")
    args = parser.parse_args(argv)
    _settle(parser, args)
    quiet_libraries()
    return report(run(args), args)


def _settle(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    import torch

    if args.tiny and args.device == "cuda":
        args.device, args.dtype = "cpu", "float32"
    elif torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; run with --tiny (or --device cpu --layers 1) to check the script")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")


if __name__ == "__main__":
    main()
