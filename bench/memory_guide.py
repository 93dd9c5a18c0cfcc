"""The memory guide's figures (docs/settings.md), computed: no GPU is needed, none is measured.

From the model: parameter bytes of the full-size components built on the meta device
(bench/full_size.py: no memory is spent), FP8 sizes (torchao's float8 weights: 1 byte per weight of
the quantized linear layers plus a float32 scale per output row; biases stay bf16), the host memory
pinned by group offload (PyTorch's pinned allocator rounds each weight's allocation up to a power of
two) and by `evict_to=host` (engine/residency.PinnedArena packs them into 1 GiB chunks), and the
FLOPs of a CFG step (bench/gpu_step.step_flops). From the named inputs below: PCIe and disk
bandwidths and the matrix rate each GPU achieves. Everything else is arithmetic, printed as the
markdown tables docs/settings.md quotes.

    .venv/bin/python bench/memory_guide.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/memory_guide.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import emit

# -- named inputs (assumptions, not measurements) --------------------------------------------------
SIZE, STEPS = 1024, 50
PCIE_GB_S = {"Gen4": 25.0, "Gen5": 50.0}  # x16, from pinned host memory
PAGEABLE_SHARE = 0.5  # pageable host memory moves at about half the pinned rate
DISK_GB_S = 3.0  # an NVMe drive, for a dropped transformer read again
OVERHEAD_S = 1.0  # text encoding and VAE decoding per image
# Dense bf16 matrix rate achieved by a whole denoising step: about 60% of the datasheet peak.
ACHIEVED_TFLOPS = {"H100/H200": 600.0, "A100": 200.0, "L40S": 220.0, "RTX 4090": 110.0, "RTX A6000": 100.0}
GB, GIB = 1e9, 2**30


def sizes() -> dict[str, Any]:
    """Bytes of the components, FP8 sizes and pinned bytes, from the meta-device model."""
    import torch

    from bench.full_size import full_size_components
    from qwen_image_server.engine.residency import PinnedArena, module_bytes
    from qwen_image_server.engine.speedups import fp8_layer_filter

    parts = full_size_components("meta", torch.bfloat16)
    transformer, encoder = parts["transformer"], parts["text_encoder"]

    def fp8_bytes(skip: tuple[str, ...]) -> int:
        chosen = fp8_layer_filter(skip)
        saved = sum(m.weight.numel() * 1 - 4 * m.out_features for n, m in transformer.named_modules() if chosen(m, n))
        return module_bytes(transformer) - saved

    def pinned_pow2(module: Any) -> int:
        return sum(1 << max(0, (p.numel() * p.element_size() - 1).bit_length()) for p in module.parameters())

    def arena(module: Any) -> int:
        chunks, used, alone = 0, PinnedArena.CHUNK_BYTES, 0
        for tensor in [*module.parameters(), *module.buffers()]:
            size = tensor.numel() * tensor.element_size()
            if size > PinnedArena.CHUNK_BYTES:
                alone += 1 << (size - 1).bit_length()
                continue
            offset = -(-used // PinnedArena.ALIGNMENT) * PinnedArena.ALIGNMENT
            if offset + size > PinnedArena.CHUNK_BYTES:
                chunks, offset = chunks + 1, 0
            used = offset + size
        return chunks * PinnedArena.CHUNK_BYTES + alone

    block = module_bytes(transformer.transformer_blocks[0])
    return {
        "transformer": module_bytes(transformer),
        "transformer_fp8_all": fp8_bytes(()),
        "transformer_fp8_default": fp8_bytes(("img_mlp",)),
        "text_encoder": module_bytes(encoder),
        "vae": module_bytes(parts["vae"]),
        "block": block,
        "pinned_group_transformer": pinned_pow2(transformer),
        "pinned_group_text_encoder": pinned_pow2(encoder),
        "pinned_arena_transformer": arena(transformer),
    }


def step_tflop() -> float:
    from bench.gpu_step import FULL, step_flops

    return step_flops(FULL, SIZE, SIZE) / 1e12


def offload_table(b: dict[str, Any]) -> list[list[str]]:
    """Per mode: what crosses PCIe per step (CFG as two passes / batched) and per image, Gen4 / Gen5."""
    model_bytes = b["transformer"] + b["text_encoder"] + b["vae"]
    rows = []
    for mode in ("none", "model", "group", "sequential"):
        per_step, per_image = [], []
        for gen in ("Gen4", "Gen5"):
            bw = PCIE_GB_S[gen] * GB
            if mode == "none":
                step = {"two": 0.0, "batched": 0.0}
                image = dict(step)
            elif mode == "model":
                image = dict.fromkeys(("two", "batched"), 2 * model_bytes / bw)
                step = {kind: image[kind] / STEPS for kind in image}
            else:
                rate = bw * (PAGEABLE_SHARE if mode == "sequential" else 1.0)
                step = {"two": 2 * b["transformer"] / rate, "batched": b["transformer"] / rate}
                text = 2 * b["text_encoder"] / rate
                image = {kind: STEPS * step[kind] + text for kind in step}
            per_step.append(step)
            per_image.append(image)
        rows.append([f"`{mode}`", _pair(per_step, "two"), _pair(per_step, "batched"), _pair(per_image, "two", 1),
                     _pair(per_image, "batched", 1)])  # fmt: skip
    return rows


def _pair(values: list[dict[str, float]], kind: str, digits: int = 2) -> str:
    return " / ".join(f"{value[kind]:.{digits}f}" for value in values)


def gpu_table(b: dict[str, Any], tflop: float) -> list[list[str]]:
    """Seconds per 1024x1024, 50-step image with CFG batched, per GPU and settings."""
    swap = {gen: 2 * b["transformer"] / (PCIE_GB_S[gen] * GB) for gen in PCIE_GB_S}
    fp8_swap_gen4 = 2 * b["transformer_fp8_default"] / (PCIE_GB_S["Gen4"] * PAGEABLE_SHARE * GB)
    model_bytes = b["transformer"] + b["text_encoder"] + b["vae"]

    def none(gpu: str) -> float:
        return STEPS * tflop / ACHIEVED_TFLOPS[gpu] + OVERHEAD_S

    group_step = b["transformer"] / (PCIE_GB_S["Gen4"] * GB)  # batched CFG: one crossing per step, overlapped
    sequential_step = b["transformer"] / (PCIE_GB_S["Gen4"] * PAGEABLE_SHARE * GB)
    rtx = tflop / ACHIEVED_TFLOPS["RTX 4090"]
    return [
        ["141 GB (H200, Gen5)", "1-3", "defaults: all three bf16 transformers stay", f"{none('H100/H200'):.1f}"],
        ["80 GB (H100, Gen5)", "1", "defaults", f"{none('H100/H200'):.1f}"],
        ["80 GB (H100, Gen5)", "2-3", "defaults: one transformer stays, `evict_to=host`",
         f"{none('H100/H200'):.1f}, +{swap['Gen5']:.1f} per change"],
        ["80 GB (H100, Gen5)", "2", "`quantization=fp8`: both stay", f"<= {none('H100/H200'):.1f}"],
        ["80 GB (A100, Gen4)", "1 / 2-3", "defaults (no fp8 on A100)",
         f"{none('A100'):.1f} / +{swap['Gen4']:.1f} per change"],
        ["48 GB (L40S, Gen4)", "1", "`quantization=fp8`", f"<= {none('L40S'):.1f}"],
        ["48 GB (L40S, Gen4)", "2-3", "`quantization=fp8`, defaults: one transformer stays",
         f"<= {none('L40S'):.1f}, +{fp8_swap_gen4:.1f} per change"],
        ["48 GB (RTX A6000, Gen4)", "any", "`offload=model`",
         f"{none('RTX A6000') + 2 * model_bytes / (PCIE_GB_S['Gen4'] * GB):.1f}"],
        ["24 GB (RTX 4090, Gen4)", "any", "`offload=group`",
         f"{STEPS * max(rtx, group_step) + OVERHEAD_S + 2 * b['text_encoder'] / (PCIE_GB_S['Gen4'] * GB):.1f}"],
        ["24 GB (RTX 4090, Gen4)", "any", "`offload=sequential`",
         f"{STEPS * (rtx + sequential_step) + OVERHEAD_S:.1f} (batched CFG) to "
         f"{STEPS * (rtx + 2 * sequential_step) + OVERHEAD_S:.1f} (two passes)"],
    ]  # fmt: skip


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, help="also write the JSON record here")
    args = parser.parse_args(argv)
    b, tflop = sizes(), step_tflop()
    print(f"inputs: {SIZE}x{SIZE}, {STEPS} steps, CFG on; PCIe {PCIE_GB_S} GB/s pinned, pageable x{PAGEABLE_SHARE}; "
          f"disk {DISK_GB_S} GB/s; +{OVERHEAD_S} s per image; achieved TFLOP/s {ACHIEVED_TFLOPS}")  # fmt: skip
    print(f"\none CFG step: {tflop:.1f} TFLOP; H100/H200 {tflop / ACHIEVED_TFLOPS['H100/H200']:.3f} s per step\n")
    one_model = b["transformer"] + b["text_encoder"] + b["vae"]
    pinned_group = b["pinned_group_transformer"] + b["pinned_group_text_encoder"]
    named = [*b.items(), ("one model", one_model), ("pinned_group one model", pinned_group)]
    size_rows = [[name, f"{value / GB:.2f}", f"{value / GIB:.2f}"] for name, value in named]
    print(markdown(["what", "GB", "GiB"], size_rows))
    print("\nWhat crosses PCIe, seconds, Gen4 / Gen5:\n")
    print(markdown(["`offload`", "per step, CFG two passes", "per step, CFG batched", "per image, two passes",
                    "per image, batched"], offload_table(b)))  # fmt: skip
    for gpu in ("H100/H200", "RTX 4090"):  # group offload overlaps its copies: a step takes the longer
        step = tflop / ACHIEVED_TFLOPS[gpu]
        ratios = [f"{gen} {'two passes' if two else 'batched'} "
                  f"x{max(step, (2 if two else 1) * b['transformer'] / (PCIE_GB_S[gen] * GB)) / step:.2f}"
                  for gen in PCIE_GB_S for two in (False, True)]  # fmt: skip
        print(f"{gpu}: {step:.3f} s per CFG step; a step with offload=group over offload=none: {', '.join(ratios)}")
    swaps = {gen: 2 * b["transformer"] / (PCIE_GB_S[gen] * GB) for gen in PCIE_GB_S}
    print(f"\nswap, evict_to=host (out and back, pinned): Gen4 {swaps['Gen4']:.2f} s, Gen5 {swaps['Gen5']:.2f} s; "
          f"evict_to=drop (read again at {DISK_GB_S} GB/s): {b['transformer'] / (DISK_GB_S * GB):.1f} s\n")  # fmt: skip
    shared = b["text_encoder"] + b["vae"]
    for label, count, key in (("3 bf16", 3, "transformer"), ("2 fp8", 2, "transformer_fp8_default"),
                              ("1 fp8", 1, "transformer_fp8_default")):  # fmt: skip
        total = (count * b[key] + shared) / GIB
        print(f"weights on the GPU, {label} transformer(s) and the shared parts: {total:.1f} GiB")
    print()
    print(markdown(["GPU memory (example, PCIe)", "Models", "Settings", "Expected s/image"], gpu_table(b, tflop)))
    record = {"inputs": {"pcie_gb_s": PCIE_GB_S, "achieved_tflops": ACHIEVED_TFLOPS, "disk_gb_s": DISK_GB_S},
              "bytes": b, "step_tflop": tflop}  # fmt: skip
    emit(record, ("step_tflop", round(tflop, 1)), args.json)
    return tflop


if __name__ == "__main__":
    main()
