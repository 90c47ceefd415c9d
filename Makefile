# The README's two commands: `make repro` sets up the venv and runs the pipeline (`dvc repro`);
# `make test` sets it up and runs lint and tests. Everything works offline on a fresh machine:
# only PyPI is reached, by `make setup`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# No hub downloads, no price-map fetch, no telemetry: wherever project code runs.
export HF_HUB_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup test lint simulate repro bench demo bento

setup: $(VENV)/.installed

# torch first: the CPU wheel of 2.13.0 lies on local disk; anything else pulling torch first
# would download a multi-GB CUDA build. The stamp makes `make setup` idempotent; it is redone
# only when the dependency list changes.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

lint: setup
	$(BIN)/ruff check .

# pytest's exit code 5 (no tests collected) fails this target like any other non-zero code.
test: setup lint
	$(BIN)/pytest --durations=15

# The main job: the training lifecycle on the embedded default (MiniLM, seed data bootstrap).
# The venv's bin goes first on PATH so the stages' `python -m training.X` run inside it.
repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

simulate: setup
	$(BIN)/tier-router simulate --config configs/router.yaml --port $${SIM_PORT:-8900}

# The router service in front of the provider simulator, both on 127.0.0.1 (Ctrl-C stops both).
# Serves the registered champion models (`make repro` first). Any OpenAI client works with
# base_url=http://127.0.0.1:$(ROUTER_PORT)/v1 and api_key=$(ROUTER_DEMO_KEY).
ROUTER_PORT ?= 3000
ROUTER_DEMO_KEY ?= sk-tier-router-demo
SIM_PORT ?= 8900
demo: setup
	@mkdir -p var; $(BIN)/tier-router simulate --config configs/router.yaml --port $(SIM_PORT) \
	    > var/demo-simulator.log 2>&1 & sim=$$!; trap "kill $$sim" EXIT; \
	echo "simulator on 127.0.0.1:$(SIM_PORT) (log var/demo-simulator.log); router on" \
	    "http://127.0.0.1:$(ROUTER_PORT)/v1, API key $(ROUTER_DEMO_KEY)"; \
	ROUTER_DEMO_KEY=$(ROUTER_DEMO_KEY) ROUTER_PROVIDER_BASE=http://127.0.0.1:$(SIM_PORT) \
	    $(BIN)/bentoml serve serving.service:TierRouter --host 127.0.0.1 --port $(ROUTER_PORT)

# The benchmarks behind docs/benchmarks.md (DESIGN's performance targets), on the registered
# champion models (`make repro` first). Each command prints its figures and writes JSON + PNG;
# bench-docs renders the Markdown from them, never by hand. About 30 minutes on 2 cores.
BENCH_DIR := docs/benchmarks
BENCH := $(BIN)/tier-router bench --bootstrap 500
bench: setup
	$(BENCH) --workload routerbench --out $(BENCH_DIR)/routerbench.json --plots $(BENCH_DIR)
	$(BENCH) --workload mmlu --out $(BENCH_DIR)/mmlu.json --plots $(BENCH_DIR)
	$(BENCH) --workload gsm8k --out $(BENCH_DIR)/gsm8k.json --plots $(BENCH_DIR)
	$(BENCH) --workload mixed --out $(BENCH_DIR)/mixed.json --plots $(BENCH_DIR)
	$(BENCH) --workload paraphrase --out $(BENCH_DIR)/paraphrase.json
	$(BIN)/tier-router overhead --out $(BENCH_DIR)/overhead.json
	$(BIN)/tier-router bench-docs $(BENCH_DIR) docs/benchmarks.md

# The service as a Bento carrying its models (the champion bundles, exported from MLflow), then a
# check that `bentoml serve` of the built Bento answers /healthz and one chat completion. Not in
# `make test`: `bentoml build` reaches PyPI.
bento: setup
	$(BIN)/python -m serving.export --out var/bento-models
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/bentoml build -f bentofile.yaml .
	$(BIN)/python -m serving.check_bento tier-router:latest
