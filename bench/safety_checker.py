"""What a safety check costs (engine/safety.py): milliseconds per picture for each checker, batch by batch.

Checkers: `classifier` (an image classifier of ViT-base shape, as `Falconsai/nsfw_image_detection`:
224x224 input, 86 M parameters) and `vl` (Qwen2.5-VL-7B, the pipelines' text encoder, asked one
yes/no question per picture, pictures scaled to `--vl-max-pixels`). Weights are random: the kernels
do not look at the values, so they time like the real ones. With `--tiny` both are the tiny test
models on the CPU (the script's check); without it they run full size on `--device` in `--dtype`.
The Qwen2.5-VL tokenizer is the tiny model's (the question is a few tokens longer than with the real
one; the 256 visual tokens dominate).

Pictures are `--size` square noise (1024), a fresh RGB list per batch size. Per checker and batch
size: one untimed warm-up call, then `--rounds` timed `check` calls (preprocessing included, as the
engine would pay it); ms per call (median, p95) and per picture. The last line is
`safety_check_ms=X`: the classifier's ms per picture at batch 1 (the VL checker's if it ran alone).
On a CPU shared with other work, torch's worker threads wait for cores between the tiny models'
small ops (~10 ms each); `OMP_NUM_THREADS=1` gives steadier figures there.

Measured on 2 shared CPU cores, OMP_NUM_THREADS=1 (ms per picture, batch 1 / 4): tiny classifier
11.7 / 7.4, tiny VL 18.2 / 14.1; ViT-base float32 on the CPU 652 / 636. Not yet measured on a GPU.

    .venv/bin/python bench/safety_checker.py --tiny                           # ~10 s on the CPU
    .venv/bin/python bench/safety_checker.py                                  # full size on a GPU
    .venv/bin/python bench/safety_checker.py --device cpu --dtype float32 --checkers classifier
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/safety_checker.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Summary, emit, machine, note, quiet_libraries, table
from bench.full_size import add_engine_options, settle_engine_options

CHECKERS = ("classifier", "vl")


@dataclass(frozen=True)
class Timing:
    checker: str
    batch: int
    per_call_ms: Summary

    @property
    def per_picture_ms(self) -> float:
        return self.per_call_ms.median / self.batch


def classifier_checker(args: argparse.Namespace) -> tuple[Any, str]:
    import torch

    from qwen_image_server.engine.safety import ClassifierChecker
    from qwen_image_server.engine.tiny_safety import TINY_LABELS, build_tiny_safety_checker

    if args.tiny:
        model, processor = build_tiny_safety_checker()
        return ClassifierChecker(model, processor), "tiny ViT"
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    from bench.gpu_step import default_dtype

    labels = dict(TINY_LABELS)
    config = ViTConfig(id2label=labels, label2id={label: index for index, label in labels.items()})  # ViT-base
    with torch.device(args.device), default_dtype(getattr(torch, args.dtype)):
        model = ViTForImageClassification(config)
    return ClassifierChecker(model, ViTImageProcessorPil()), "ViT-base"


def vl_checker(args: argparse.Namespace) -> tuple[Any, str]:
    import torch
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from qwen_image_server.engine.processor import ImageOnlyQwen2VLProcessor
    from qwen_image_server.engine.safety import VisionLanguageChecker
    from qwen_image_server.engine.tiny import build_tiny_components
    from qwen_image_server.engine.tiny_tokenizer import build_tiny_tokenizer

    options = {"device": torch.device(args.device), "max_pixels": args.vl_max_pixels}
    if args.tiny:
        components = build_tiny_components()
        return VisionLanguageChecker(components["text_encoder"], components["processor"], **options), "tiny Qwen2.5-VL"
    from bench.full_size import _text_encoder
    from bench.gpu_step import default_dtype

    tokenizer = build_tiny_tokenizer()
    with torch.device(args.device), default_dtype(getattr(torch, args.dtype)):
        encoder = _text_encoder(tokenizer, args.layers).eval().requires_grad_(False)
    processor = ImageOnlyQwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer)
    name = "Qwen2.5-VL-7B" if args.layers is None else f"Qwen2.5-VL-7B width, {args.layers} layers"
    return VisionLanguageChecker(encoder, processor, **options), name


def noise_pictures(count: int, side: int) -> list[Any]:
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(0)
    return [Image.fromarray(generator.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(count)]


def time_checker(name: str, checker: Any, args: argparse.Namespace) -> list[Timing]:
    timings = []
    for batch in args.batches:
        pictures = noise_pictures(batch, args.size)
        note(f"{name}: batch {batch}")
        scores = checker.check(pictures)  # warm-up; also checks the output's shape
        assert len(scores) == batch and all(0 <= score <= 1 for score in scores)
        seconds = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            checker.check(pictures)  # returns Python floats: the device has finished
            seconds.append(time.perf_counter() - started)
        timings.append(Timing(name, batch, Summary.of(seconds).scaled(1000)))
    return timings


def run(args: argparse.Namespace) -> tuple[list[Timing], dict[str, str]]:
    import torch

    builders = {"classifier": classifier_checker, "vl": vl_checker}
    timings, models = [], {}
    for name in args.checkers:
        note(f"building the {name} checker")
        checker, models[name] = builders[name](args)
        timings += time_checker(name, checker, args)
        del checker
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return timings, models


def report(timings: list[Timing], models: dict[str, str], args: argparse.Namespace) -> float:
    print(f"safety check of {args.size}x{args.size} pictures, {args.rounds} rounds, {args.device} {args.dtype}, "
          f"VL pictures scaled to {args.vl_max_pixels} pixels")  # fmt: skip
    rows = [[t.checker, models[t.checker], t.batch, t.per_call_ms.median, t.per_call_ms.p95, t.per_picture_ms]
            for t in timings]  # fmt: skip
    print(table(["checker", "model", "batch", "ms/call", "p95 ms/call", "ms/picture"], rows))
    first = next(t for t in timings if t.batch == args.batches[0])
    headline = round(first.per_picture_ms, 3)
    keys = ("size", "rounds", "device", "dtype", "tiny", "layers", "batches", "checkers", "vl_max_pixels")
    record = {
        "machine": machine(),
        "settings": {key: getattr(args, key) for key in keys},
        "models": models,
        "timings": [
            {
                "checker": t.checker,
                "batch": t.batch,
                "ms_per_call": t.per_call_ms.as_dict(),
                "ms_per_picture": t.per_picture_ms,
            }
            for t in timings
        ],
    }
    emit(record, ("safety_check_ms", headline), args.json)
    return headline


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names or set(names) - set(CHECKERS):
        raise argparse.ArgumentTypeError(f"checkers are {', '.join(CHECKERS)}, got {text!r}")
    return tuple(name for name in CHECKERS if name in names)  # the classifier first: it gives the headline


def _batches(text: str) -> tuple[int, ...]:
    batches = tuple(int(part) for part in text.split(","))
    if 1 not in batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive and include 1, got {text!r}")
    return tuple(sorted(set(batches)))


def main(argv: list[str] | None = None) -> float:
    from qwen_image_server.engine.safety import VL_MAX_PIXELS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--checkers", type=_names, default=CHECKERS, help="classifier,vl [both]")
    parser.add_argument("--batches", type=_batches, default=(1, 4), help="pictures per call [1,4]")
    parser.add_argument("--rounds", type=int, default=5, help="timed calls per checker and batch [5]")
    parser.add_argument("--vl-max-pixels", type=int, default=VL_MAX_PIXELS, help="VL picture area [448*448]")
    add_engine_options(parser)
    parser.set_defaults(size=1024)  # generated pictures' size, --tiny too (preprocessing cost is real)
    args = parser.parse_args(argv)
    settle_engine_options(parser, args)
    quiet_libraries()
    return report(*run(args), args)


if __name__ == "__main__":
    main()
