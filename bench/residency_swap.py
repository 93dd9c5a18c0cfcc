"""Model residency: what a change of model costs when only one transformer may stay on the device
(`resident_models=1`), by `evict_to` (`host`: copied to host memory and back; `drop`: freed and
loaded again from the checkpoint), against every transformer resident (no swap).

Two models with their own transformers, `qwen-image` (the tiny checkpoint) and
`qwen-image-edit-plus` (the tiny model saved to a folder, so a dropped transformer is read back from
files), take turns request by request, so every request after the first of each pays one swap.
Reported per configuration: seconds per request (median), the swaps counted by
`Engine.residency_stats()` and their median seconds. On the CPU `host` moves nothing (the weights
are in host memory already): its figure is the bookkeeping only; `drop` reloads for real. On a GPU
the figures are the PCIe copies and the reload; bench/memory_guide.py computes them for the full
model.

    .venv/bin/python bench/residency_swap.py --tiny     # the tiny model on the CPU, ~1 min
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/residency_swap.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit, machine, note, quiet_libraries, table
from bench.full_size import engine_settings

CONFIGURATIONS = {  # name: the settings that differ
    "resident": {"resident_models": 0},  # automatic; on the CPU nothing ever leaves
    "host": {"resident_models": 1, "evict_to": "host"},
    "drop": {"resident_models": 1, "evict_to": "drop"},
}


def measure(args: argparse.Namespace, folder: Path, name: str) -> dict[str, Any]:
    from PIL import Image

    from qwen_image_server.domain import GenerationRequest, ModelName
    from qwen_image_server.engine import Engine
    from qwen_image_server.images import encode_image

    settings = engine_settings(args, checkpoint_qwen_image_edit_plus=str(folder),
                               models=(ModelName.QWEN_IMAGE, ModelName.QWEN_IMAGE_EDIT_PLUS),
                               **CONFIGURATIONS[name])  # fmt: skip
    engine = Engine(settings)
    picture = encode_image(Image.new("RGB", (96, 96), (120, 60, 30)), "png", None)
    common = {"width": args.size, "height": args.size, "num_inference_steps": args.steps, "seed": 1}
    requests = [
        GenerationRequest.create(model=ModelName.QWEN_IMAGE, prompt="a fox in snow", **common),
        GenerationRequest.create(
            model=ModelName.QWEN_IMAGE_EDIT_PLUS, prompt="make it blue", images=(picture,), **common
        ),
    ]
    for request in requests:  # load both (and warm up)
        engine.render(request)
    swaps_before = engine.residency_stats().swaps
    seconds, swap_seconds = [], []
    for turn in range(2 * args.rounds):
        started = time.perf_counter()
        engine.render(requests[turn % 2])
        seconds.append(time.perf_counter() - started)
        stats = engine.residency_stats()
        if stats.swaps > swaps_before + len(swap_seconds):
            swap_seconds.append(stats.last_swap_seconds)
    return {
        "configuration": name,
        "seconds_per_request": statistics.median(seconds),
        "swaps": len(swap_seconds),
        "requests": len(seconds),
        "swap_seconds": statistics.median(swap_seconds) if swap_seconds else 0.0,
    }


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (the only mode so far)")
    parser.add_argument("--size", type=int, default=256, help="square side in pixels [256]")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps [4]")
    parser.add_argument("--rounds", type=int, default=4, help="request pairs (one per model) per configuration [4]")
    parser.add_argument("--json", type=Path, help="also write the JSON record here")
    args = parser.parse_args(argv)
    if not args.tiny:
        parser.error("only --tiny so far: a second full-size checkpoint cannot be made here; "
                     "bench/memory_guide.py computes the full-size swap")  # fmt: skip
    args.device, args.dtype = "cpu", "float32"
    quiet_libraries()
    from qwen_image_server.engine.tiny import save_tiny_model

    with tempfile.TemporaryDirectory(prefix="other-tiny-") as other:
        save_tiny_model(Path(other))
        rows = []
        for name in CONFIGURATIONS:
            note(name)
            rows.append(measure(args, Path(other), name))
    resident = rows[0]["seconds_per_request"]
    print(f"two models taking turns, {args.size}x{args.size}, {args.steps} steps, {args.rounds} rounds, cpu float32")
    lines = [
        [row["configuration"], f"{row['seconds_per_request']:.3f}", f"{row['seconds_per_request'] - resident:+.3f}",
         f"{row['swaps']}/{row['requests']}", f"{row['swap_seconds']:.3f}"]
        for row in rows
    ]  # fmt: skip
    print(table(["evict_to", "s/request", "vs resident", "swaps", "s/swap"], lines))
    drop = next(row for row in rows if row["configuration"] == "drop")
    emit({"machine": machine(), "settings": vars(args) | {"json": None}, "rows": rows},
         ("drop_swap_seconds", round(drop["swap_seconds"], 4)), args.json)  # fmt: skip
    return float(drop["swap_seconds"])


if __name__ == "__main__":
    main()
