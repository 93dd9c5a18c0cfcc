"""What a C2PA manifest costs per image: milliseconds to sign and to read back (validate), and bytes
added, for PNG, JPEG and WebP at `--size` (1024 by default), through `ProvenanceSigner` with the
self-signed ES256 pair, no thumbnail, no timestamp authority, no network (provenance/c2pa_manifest.py).

The picture is smooth noise (a photo-like encoded size: the library hashes the whole file, so the
cost follows the encoded bytes, not the pixels). Per format: median ms per sign and per read over
`--rounds`, the encoded size and the bytes the manifest adds. The last line is `c2pa_sign_ms=X`, the
median over the formats of the per-format medians.

    .venv/bin/python bench/c2pa_cost.py                   # a few seconds on the CPU
    .venv/bin/python bench/c2pa_cost.py --size 256 --rounds 3
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/c2pa_cost.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from bench.common import emit, machine, table
from qwen_image_server.provenance.c2pa_manifest import ProvenanceSigner, read_provenance

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
MODEL = {"model": "qwen-image", "model_version": "Qwen/Qwen-Image-2512", "title": "a red fox in fresh snow"}


def picture(size: int) -> Image.Image:
    coarse = np.random.default_rng(0).integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = np.random.default_rng(1).integers(-6, 7, smooth.shape, dtype=np.int16)  # a photo's fine detail
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def measure(signer: ProvenanceSigner, data: bytes, content_type: str, rounds: int) -> dict[str, Any]:
    sign_ms, read_ms = [], []
    signed = b""
    for _ in range(rounds):
        start = time.perf_counter()
        signed = signer.sign(data, content_type, **MODEL)
        sign_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        summary = read_provenance(signed)
        read_ms.append((time.perf_counter() - start) * 1000)
        assert summary.validation_state == "Valid", summary
    return {
        "content_type": content_type,
        "encoded_bytes": len(data),
        "bytes_added": len(signed) - len(data),
        "sign_ms": statistics.median(sign_ms),
        "read_ms": statistics.median(read_ms),
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    image = picture(args.size)
    with tempfile.TemporaryDirectory() as folder:
        signer = ProvenanceSigner(Path(folder))
        results = []
        for name, content_type in FORMATS.items():
            buffer = io.BytesIO()
            image.save(buffer, name)
            results.append({"format": name, **measure(signer, buffer.getvalue(), content_type, args.rounds)})
    return results


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> float:
    print(f"C2PA manifest per image at {args.size}x{args.size}, ES256 self-signed, no thumbnail, no TSA, "
          f"median of {args.rounds} rounds")  # fmt: skip
    rows = [[r["format"], r["encoded_bytes"], r["bytes_added"], f"{r['sign_ms']:.2f}", f"{r['read_ms']:.2f}"]
            for r in results]  # fmt: skip
    print(table(["format", "encoded bytes", "bytes added", "sign ms", "read ms"], rows))
    headline = round(statistics.median(r["sign_ms"] for r in results), 3)
    record = {"machine": machine(), "settings": {"size": args.size, "rounds": args.rounds}, "formats": results}
    emit(record, ("c2pa_sign_ms", headline), args.json)
    return headline


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels [1024]")
    parser.add_argument("--rounds", type=int, default=15, help="signs and reads per format [15]")
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON record here")
    args = parser.parse_args(argv)
    return report(run(args), args)


if __name__ == "__main__":
    main()
