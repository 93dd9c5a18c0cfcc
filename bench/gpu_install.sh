#!/usr/bin/env bash
# The device machine's preparation, shared by bench/gpu_run.sh and bench/gpu_run_adapters.sh: install
# gpu-wheels/ (`make gpu-wheels`, made for its CPython 3.12; nothing can be fetched there), then import
# everything the benchmarks need, so that a missing package stops the run here, before anything is timed.
set -euo pipefail
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
shopt -s nullglob
wheels=(gpu-wheels/*.whl)
if [ "${#wheels[@]}" -eq 0 ]; then
    echo "no gpu-wheels/*.whl: run 'make gpu-wheels' where the registries are reachable and carry gpu-wheels/" >&2
    exit 1
fi
python3 -m pip install --quiet --no-deps --no-index "${wheels[@]}"
PYTHONPATH="src:." python3 - <<'PY' | tee "$OUT/versions.txt"
import importlib.metadata as metadata

import torch

import bench.acceleration, bench.engine_speed, bench.gpu_step, bench.lora_switching, bench.residency_swap  # noqa: F401
from qwen_image_server.engine import engine, residency, speedups  # noqa: F401
from qwen_image_server.engine.speedups import fp8_config

assert torch.cuda.is_available(), "torch sees no CUDA GPU"
fp8_config(torch.device("cuda"))  # torchao and its FP8 configuration
names = ("torch", "diffusers", "transformers", "accelerate", "peft", "torchao", "pydantic", "huggingface-hub")
print(*(f"{name} {metadata.version(name)}" for name in names), torch.cuda.get_device_name(), sep="; ")
PY
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee -a "$OUT/versions.txt"
