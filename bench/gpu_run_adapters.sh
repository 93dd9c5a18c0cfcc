#!/usr/bin/env bash
# The GPU measurements of acceleration levels and LoRA adapters, about 6 minutes on one H100/H200,
# after (or instead of) bench/gpu_run.sh, with the same preparation (`make gpu-wheels`, gpu-wheels/
# carried). Full-size transformer with random weights; random rank-64 adapters stand in for trained
# ones (they time alike; their pictures mean nothing).
set -euo pipefail
export OUT="${OUT:-gpu-out}"
bash bench/gpu_install.sh  # the wheels, then every import the benches need (stops here if one fails)
export PYTHONPATH="src:."
# none / regular (First Block Cache) / high (Lightning, 8 steps without CFG) at 1024x1024, 50 steps (~4 min).
timeout 260 python3 bench/acceleration.py --size 1024 --steps 50 --rounds 1 --lightning \
    --json "$OUT/acceleration.json" 2> "$OUT/acceleration.log" | tee "$OUT/acceleration.txt" \
    || echo "acceleration: exit $? (time limit or failure; see acceleration.log)"
# Fused, active and switched adapters at 1024x1024, 10 steps (~2 min).
timeout 120 python3 bench/lora_switching.py --size 1024 --steps 10 --rounds 2 \
    --json "$OUT/lora_switching.json" 2> "$OUT/lora_switching.log" | tee "$OUT/lora_switching.txt" \
    || echo "lora_switching: exit $? (time limit or failure; see lora_switching.log)"
tail -n 3 "$OUT"/acceleration.log "$OUT"/lora_switching.log
