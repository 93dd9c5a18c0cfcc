"""What finishing costs per image (provenance/finishing.py): the encode alone against the encode with
each mark added in turn, at `--size` (1024 by default), same picture, same format.

Steps, cumulative: `encode` (the picture encoded, what the server did before), `+ watermark` (the
visible mark drawn), `+ invisible` (the luminance watermark embedded), `+ c2pa` (the manifest signed,
the server's defaults from here on), each the median of `--rounds`, rounds taking turns. The last
line is `finishing_overhead_ms=X`: the server's default finishing (invisible mark and C2PA) minus
the encode alone, per image.

    .venv/bin/python bench/finishing.py                  # ~20 s on the CPU
    .venv/bin/python bench/finishing.py --format jpeg
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/finishing.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.c2pa_cost import picture
from bench.common import emit, machine, table

STEPS = {
    "encode": {"invisible_watermark": False, "c2pa": False},
    "+ watermark": {"invisible_watermark": False, "c2pa": False, "watermark_force": True},
    "+ invisible": {"invisible_watermark": True, "c2pa": False, "watermark_force": True},
    "+ c2pa": {"invisible_watermark": True, "c2pa": True, "watermark_force": True},
    "defaults": {"invisible_watermark": True, "c2pa": True},
}


def run(args: argparse.Namespace, folder: Path) -> dict[str, float]:
    from qwen_image_server.domain import GenerationRequest
    from qwen_image_server.provenance.finishing import Finishing
    from qwen_image_server.settings import Settings

    request = GenerationRequest.create(model="qwen-image", prompt="a red fox", width=args.size, height=args.size,
                                       seed=1, output_format=args.format)  # fmt: skip
    finishings = {
        name: Finishing(Settings(data_dir=folder, **options), lambda model: "bench") for name, options in STEPS.items()
    }
    image = picture(args.size)
    seconds: dict[str, list[float]] = {name: [] for name in STEPS}
    for _ in range(args.rounds):
        for name, finishing in finishings.items():
            started = time.perf_counter()
            finishing.finish(request, image, 0, 1)
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) * 1000 for name, values in seconds.items()}


def report(ms: dict[str, float], args: argparse.Namespace) -> float:
    print(f"finishing one {args.size}x{args.size} {args.format} image, {args.rounds} rounds")
    base = ms["encode"]
    print(table(["step", "ms/image", "over encode ms"], [[name, f"{value:.1f}", f"{value - base:+.1f}"]
                                                          for name, value in ms.items()]))  # fmt: skip
    overhead = round(ms["defaults"] - base, 1)
    record: dict[str, Any] = {"machine": machine(), "settings": {"size": args.size, "format": args.format,
                              "rounds": args.rounds}, "ms_per_image": ms}  # fmt: skip
    emit(record, ("finishing_overhead_ms", overhead), args.json)
    return overhead


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels [1024]")
    parser.add_argument("--format", default="png", choices=["png", "jpeg", "webp"], help="output format [png]")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds [9]")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON record here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="finishing-") as folder:
        return report(run(args, Path(folder)), args)


if __name__ == "__main__":
    main()
