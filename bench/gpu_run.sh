#!/usr/bin/env bash
# Every GPU measurement of the engine in one run, about 9 minutes on one H100/H200 (80 GB or more).
#
# The device machine has python3 with a CUDA torch, transformers, accelerate and peft, and no
# network. Prepare here, where the registries are reachable:
#     make gpu-wheels          # diffusers, torchao and what the engine imports, into gpu-wheels/
# then run there from the repository root, carrying gpu-wheels/:
#     bash bench/gpu_run.sh    # writes its tables and JSON records to $OUT (default: gpu-out/)
# and paste the tables into docs/performance.md with the date and the GPU.
set -uo pipefail
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
# Only what is missing: the machine's own torch, transformers and accelerate stay as they are.
python3 - <<'PY'
import glob, importlib.util, subprocess, sys
# (Wheels with compiled code, pydantic-core's and Pillow's, are for the Python that ran `make gpu-wheels`.)
wanted = {"diffusers": "diffusers", "torchao": "torchao", "pydantic": "pydantic", "pydantic_core": "pydantic_core",
          "annotated_types": "annotated_types", "importlib_metadata": "importlib_metadata", "zipp": "zipp",
          "PIL": "pillow", "requests": "requests", "urllib3": "urllib3", "idna": "idna",
          "charset_normalizer": "charset_normalizer",
          "pydantic_settings": "pydantic_settings",
          "dotenv": "python_dotenv", "typing_inspection": "typing_inspection", "httpx": "httpx",
          "httpcore": "httpcore", "h11": "h11", "anyio": "anyio", "sniffio": "sniffio", "certifi": "certifi"}
missing = [wheel for module, name in wanted.items() if importlib.util.find_spec(module) is None
           for wheel in glob.glob(f"gpu-wheels/{name}-*.whl")]
if missing:
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", *missing], check=True)
PY
if [ "${1:-}" = "--install-only" ]; then exit 0; fi
export PYTHONPATH="src:."
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee -a "$OUT/versions.txt"
# The transformer alone: one CFG step at 1024x1024, each speed-up cumulatively (~3 min).
timeout 200 python3 bench/gpu_step.py --sizes 1024 --warmup 2 --iters 8 --json "$OUT/gpu_step.json" \
    2> "$OUT/gpu_step.log" | tee "$OUT/gpu_step.txt"
# The engine end to end: 1024x1024, 10 steps (ms per step carries to 50), batches of 2 (~5 min).
timeout 330 python3 bench/engine_speed.py --size 1024 --steps 10 --batch 2 --rounds 2 \
    --json "$OUT/engine_speed.json" 2> "$OUT/engine_speed.log" | tee "$OUT/engine_speed.txt"
tail -n 3 "$OUT"/*.log
