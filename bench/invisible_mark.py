"""The invisible watermark (provenance/invisible_mark.py): how it survives re-encoding and resizing,
what it costs in picture quality and time.

Pictures, made here with a fixed seed: `photo` (smooth gradients, shapes, blurred texture and fine
noise, like a photograph), `grey` (flat 128) and `white` (flat 250: near the clipping point), at
each `--sizes` side (square). Each is marked with `--payloads` random 8-byte payloads, then put
through each attack: PNG round trip, JPEG q50/60/75/90/95 (Pillow's default 4:2:0 subsampling),
WebP q75/q90, and `half` (resized to 50% with Lanczos and back with bicubic). A cell of the table
is the payload bits read right (mean over payloads) and the exact decodes (`detect` returned the
payload). `false` counts the unmarked pictures, under every attack, for which `detect` found a mark
(it should say None). PSNR is the marked picture against the original; ms are per call (median).
The last line is `invisible_mark_jpeg75_bit_accuracy=X`: the mean over every picture and payload.

    .venv/bin/python bench/invisible_mark.py                       # ~12 s on 2 CPU cores
    .venv/bin/python bench/invisible_mark.py --payloads 1 --sizes 512
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

if __package__ in (None, ""):  # run as `python bench/invisible_mark.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine, table
from qwen_image_server.provenance import invisible_mark

PICTURES = ("photo", "grey", "white")


def photo_like(width: int, height: int | None = None, seed: int = 0) -> Image.Image:
    """A deterministic stand-in for a photograph (square when `height` is None): gradients, shapes,
    blurred texture, fine noise. The tests mark and read the same pictures."""
    height = width if height is None else height
    generator = np.random.default_rng(seed)
    across, down = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    base = np.stack([40 + 170 * across, 60 + 140 * down, 200 - 120 * across * down], axis=-1)
    picture = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    short = min(width, height)
    for _ in range(14):
        x, y = generator.uniform(0, width), generator.uniform(0, height)
        radius = generator.uniform(short / 20, short / 5)
        colour = tuple(int(c) for c in generator.integers(0, 256, 3))
        shape = draw.ellipse if generator.random() < 0.5 else draw.rectangle
        shape((x - radius, y - radius, x + radius, y + radius), fill=colour)
    texture = Image.fromarray(generator.normal(128, 60, (height, width)).clip(0, 255).astype(np.uint8))
    texture = texture.filter(ImageFilter.GaussianBlur(1.5))
    pixels = np.asarray(picture, dtype=np.float32) + (np.asarray(texture, dtype=np.float32)[..., None] - 128) * 0.4
    pixels += generator.normal(0, 3, pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def picture(name: str, side: int) -> Image.Image:
    if name == "photo":
        return photo_like(side)
    level = {"grey": 128, "white": 250}[name]
    return Image.new("RGB", (side, side), (level, level, level))


def encoded(image: Image.Image, fmt: str, **options: Any) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def halved_and_back(image: Image.Image) -> Image.Image:
    width, height = image.size
    small = image.resize((width // 2, height // 2), Image.Resampling.LANCZOS)
    return small.resize((width, height), Image.Resampling.BICUBIC)


ATTACKS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "png": lambda image: encoded(image, "PNG"),
    **{f"jpeg{q}": (lambda image, q=q: encoded(image, "JPEG", quality=q)) for q in (50, 60, 75, 90, 95)},
    **{f"webp{q}": (lambda image, q=q: encoded(image, "WEBP", quality=q)) for q in (75, 90)},
    "half": halved_and_back,
}


def psnr(marked: Image.Image, original: Image.Image) -> float:
    difference = np.asarray(marked, dtype=np.float64) - np.asarray(original, dtype=np.float64)
    mse = float((difference**2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def measure(name: str, side: int, payloads: list[bytes]) -> dict[str, Any]:
    """One picture at one size: per attack, bit accuracy, exact decodes, false marks; PSNR and ms."""
    original = picture(name, side)
    accuracy: dict[str, list[float]] = {attack: [] for attack in ATTACKS}
    exact = dict.fromkeys(ATTACKS, 0)
    strengths: dict[str, list[float]] = {attack: [] for attack in ATTACKS}
    embed_ms, detect_ms, quality = [], [], []
    for payload in payloads:
        started = time.perf_counter()
        marked = invisible_mark.embed(original, payload)
        embed_ms.append((time.perf_counter() - started) * 1000)
        assert marked is not None, f"{side}x{side} is below the minimum"
        quality.append(psnr(marked, original))
        started = time.perf_counter()
        invisible_mark.detect(marked)
        detect_ms.append((time.perf_counter() - started) * 1000)
        sent = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
        for attack, apply in ATTACKS.items():
            reading = invisible_mark.read(apply(marked))
            assert reading is not None
            accuracy[attack].append(float((reading.bits[: sent.size] == sent).mean()))
            exact[attack] += reading.payload == payload
            strengths[attack].append(reading.strength)
    false_marks = sum(invisible_mark.detect(apply(original)) is not None for apply in ATTACKS.values())
    return {
        "picture": name,
        "side": side,
        "payloads": len(payloads),
        "psnr_db": round(min(quality), 2),
        "embed_ms": round(statistics.median(embed_ms), 1),
        "detect_ms": round(statistics.median(detect_ms), 1),
        "false_marks": false_marks,
        "attacks": {
            attack: {
                "bit_accuracy": round(statistics.fmean(accuracy[attack]), 4),
                "exact": exact[attack],
                "min_vote_strength": round(min(strengths[attack]), 2),
            }
            for attack in ATTACKS
        },
    }


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> float:
    print(f"invisible mark: {args.payloads} payload(s) per picture, step {invisible_mark.STEP:g}, "
          f"vote strength needed {invisible_mark.MINIMUM_VOTE_STRENGTH:g}; cells: bit accuracy, exact/payloads "
          f"(weakest vote strength)")  # fmt: skip
    columns = [f"{result['picture']} {result['side']}" for result in results]
    rows = [
        [attack]
        + [
            f"{r['attacks'][attack]['bit_accuracy']:.3f} {r['attacks'][attack]['exact']}/{r['payloads']} "
            f"({r['attacks'][attack]['min_vote_strength']:.1f})"
            for r in results
        ]
        for attack in ATTACKS
    ]
    rows.append(["PSNR dB", *(f"{r['psnr_db']:.1f}" for r in results)])
    rows.append(["embed ms", *(f"{r['embed_ms']:.0f}" for r in results)])
    rows.append(["detect ms", *(f"{r['detect_ms']:.0f}" for r in results)])
    rows.append([f"false/{len(ATTACKS)}", *(str(r["false_marks"]) for r in results)])
    print(table(["attack", *columns], rows))
    headline = round(statistics.fmean(r["attacks"]["jpeg75"]["bit_accuracy"] for r in results), 4)
    settings = {"payloads": args.payloads, "sizes": args.sizes, "step": invisible_mark.STEP}
    emit({"machine": machine(), "settings": settings, "results": results},
         ("invisible_mark_jpeg75_bit_accuracy", headline), args.json)  # fmt: skip
    return headline


def _sizes(text: str) -> list[int]:
    sizes = [int(part) for part in text.split(",") if part.strip()]
    if not sizes or min(sizes) < invisible_mark.MINIMUM_SIDE:
        raise argparse.ArgumentTypeError(f"sizes of at least {invisible_mark.MINIMUM_SIDE}, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--payloads", type=int, default=5, help="random payloads per picture [5]")
    parser.add_argument("--sizes", type=_sizes, default=[1024, 512], help="square sides, e.g. 1024,512 [1024,512]")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON record here")
    args = parser.parse_args(argv)
    generator = np.random.default_rng(2024)
    payloads = [generator.bytes(invisible_mark.PAYLOAD_BYTES) for _ in range(args.payloads)]
    results = [measure(name, side, payloads) for side in args.sizes for name in PICTURES]
    return report(results, args)


if __name__ == "__main__":
    main()
