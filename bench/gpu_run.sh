#!/usr/bin/env bash
# Every GPU measurement of the engine in one run, sized for about 9 minutes of a fresh H100/H200
# (80 GB or more); the GPU machine's lease is 15 minutes, its start included.
#
# The device machine has python3 (CPython 3.12) with a CUDA torch, transformers, accelerate and peft,
# and no network. Prepare here, where the registries are reachable:
#     make gpu-wheels          # diffusers, torchao, pydantic ..., built for CPython 3.12, into gpu-wheels/
# then run there from the repository root, carrying gpu-wheels/:
#     bash bench/gpu_run.sh    # writes its tables and JSON records to $OUT (default: gpu-out/)
# and paste the tables into docs/performance.md with the date and the GPU.
#
# Time, estimated from the FLOPs (141 TFLOP per CFG step at 1024x1024: 0.2-0.35 s on an H200 in
# bf16) and 1-3 min per torch.compile: wheels and imports ~0.5 min; gpu_step.py ~2.5 min (cut at
# 170 s); engine_speed.py ~5.5 min (cut at 330 s): the full-size model built (~1 min), 5 warm-up
# calls and one round of 3 variants x 5 images at 10 steps (~100 s, ms/step carries to 50 steps),
# one image at 50 steps measured (~17 s: the <= 10 s per image target), then compile (1-3 min of
# compilation) and fp8 (compiled again), each with its 50-step image. A bench stopped by its time
# limit keeps the rows it printed (engine_speed.py prints and writes each row as it finishes), and
# the script goes on. The residency swap (bench/residency_swap.py) runs the tiny model only: its
# full-size figures are computed (bench/memory_guide.py).
set -euo pipefail
export OUT="${OUT:-gpu-out}"
bash bench/gpu_install.sh  # the wheels, then every import the benches need (stops here if one fails)
export PYTHONPATH="src:."

timed() {  # NAME SECONDS SCRIPT ARGS...: one bench, its stdout to NAME.txt, stderr to NAME.log
    local name=$1 limit=$2
    shift 2
    local status=0
    timeout "$limit" python3 "$@" --json "$OUT/$name.json" 2> "$OUT/$name.log" | tee "$OUT/$name.txt" || status=$?
    echo "$name: exit $status after at most $limit s" | tee -a "$OUT/status.txt"
}

# The transformer alone: one CFG step at 1024x1024, each speed-up cumulatively.
timed gpu_step 170 bench/gpu_step.py --sizes 1024 --warmup 2 --iters 8
# The engine end to end: 1024x1024, 10 steps, batches of 2, plus one image at 50 steps per variant.
timed engine_speed 330 bench/engine_speed.py --size 1024 --steps 10 --long-steps 50 --batch 2 --rounds 1 \
    --variants stock,two_pass,default,compile,fp8
tail -n 3 "$OUT"/*.log
