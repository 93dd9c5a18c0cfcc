# Two commands on a fresh machine: `make serve` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first: on CPU machines pip takes the local CPU wheel; a plain resolve would pull CUDA builds.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test test-quick lint format serve demo clean gpu-wheels

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The edit-test loop (about 4.5 minutes on 2 cores, a quarter of `make test`): the tests that run in
# this process or one live server (unit, store contracts, API, results, client), stopping at the
# first failure. Not the engine's pipelines, the dialects' SDKs, real processes, the browser, fuzzing
# or the benchmarks' scripts: run those with `make test` before a commit.
test-quick: $(STAMP)
	$(BIN)/python -m pytest -x -m "not slow" tests/unit tests/contracts tests/api tests/results tests/client $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

serve: $(STAMP)
	$(BIN)/qwen-image serve $(SERVE_ARGS)

demo: $(STAMP)
	$(BIN)/qwen-image generate "a red fox in snow" --model tiny --size 256x256 --steps 4 --seed 7 -o fox.png

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Wheels a GPU machine without network needs to run bench/gpu_run.sh: what its image lacks (it has
# python3 3.12 with torch 2.11, transformers, accelerate, peft, huggingface-hub, httpx, requests and
# Pillow), built for ITS Python (CPython 3.12, x86_64 Linux), not this venv's, at this venv's versions.
# torchao 0.17.0: the first release built against torch 2.11, ABI-stable on it (pytorch/ao#2919).
GPU_PYTHON ?= 3.12
GPU_ABI ?= cp312
GPU_PLATFORMS := manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_28_x86_64
GPU_LOCAL_PINS := diffusers pydantic pydantic-core annotated-types pydantic-settings python-dotenv \
	typing-inspection typing-extensions importlib-metadata lazy-importer zipp
GPU_TARGET := --only-binary=:all: --python-version $(GPU_PYTHON) --implementation cp --abi $(GPU_ABI) \
	$(addprefix --platform ,$(GPU_PLATFORMS))
gpu-wheels: $(STAMP)
	rm -rf gpu-wheels
	$(BIN)/python -m pip download --quiet --no-deps $(GPU_TARGET) -d gpu-wheels torchao==0.17.0 \
		$$($(BIN)/python -c 'import sys, importlib.metadata as m; print(*(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' $(GPU_LOCAL_PINS))
	# Each wheel installable there: pip picks none that its Python or platform cannot take.
	$(BIN)/python -m pip install --quiet --dry-run --no-deps --ignore-installed --target "$$(mktemp -d)" \
		$(GPU_TARGET) gpu-wheels/*.whl
	$(BIN)/python bench/gpu_wheels.py gpu-wheels  # and what each needs is a wheel or on the machine
