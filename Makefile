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

# Wheels a GPU machine without network needs to run bench/gpu_run.sh (it has torch, transformers
# and accelerate; see docs/performance.md). torchao 0.18 loads its C++ kernels on torch >= 2.11 (its own check).
gpu-wheels: $(STAMP)
	$(BIN)/python -m pip download --quiet --no-deps -d gpu-wheels diffusers==0.42.1 torchao==0.18.0 \
		pydantic pydantic-core annotated-types pydantic-settings python-dotenv typing-inspection httpx httpcore h11 \
		anyio sniffio certifi importlib-metadata zipp pillow requests urllib3 idna charset-normalizer
