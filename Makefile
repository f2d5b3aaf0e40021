# DICOMweb zero-trust reference deployment. `make` alone lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
STACK ?= auto
RUN_DIR ?= .run
# One lint command for `make lint` and `make test` (CI runs `make test`, so CI keeps code clean).
LINT := $(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && \
	$(VENV)/bin/mypy --config-file pyproject.toml services/gateway/src services/stack/src services/emr/src idp/client/src

help: ## List the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-z][a-zA-Z_-]*:.*## /{printf "  %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

bootstrap: ## Install what is missing (Debian packages, .venv, npm packages); idempotent
	@scripts/bootstrap.sh

up: bootstrap ## Start the whole demo (STACK=native|compose to force one)
	@$(PY) -m ztstack up --stack $(STACK) --run-dir $(RUN_DIR)

down: ## Stop the processes recorded by `up` (CLEAN=1 also removes the run directory)
	@$(PY) -m ztstack down --run-dir $(RUN_DIR) $(if $(CLEAN),--clean,)

status: ## Show what is running and where
	@$(PY) -m ztstack status --run-dir $(RUN_DIR)

logs: ## Show the tail of every service log
	@$(PY) -m ztstack logs --run-dir $(RUN_DIR)

test: bootstrap ## Install what is missing, lint (fail fast), then unit + end-to-end tests; reports/
	@$(LINT) || { echo >&2 "make test: lint failed (above), no test ran. Fix: $(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix . (mypy errors by hand), then make test."; exit 1; }
	@scripts/test.sh

lint: bootstrap ## ruff and mypy (strict for the gateway); `make test` runs it first
	@$(LINT)

bench: bootstrap ## Benchmark direct vs edge+gateway vs plain proxy (BENCH_ARGS=--uncached ...); audit append rate
	@$(PY) scripts/bench.py --run-dir $(RUN_DIR) $(BENCH_ARGS)
	@$(PY) scripts/bench_audit.py

soak: bootstrap ## Two replicas on one PostgreSQL, mixed demo traffic (SOAK_SECONDS=600); needs `make up`
	@$(PY) scripts/soak.py --run-dir $(RUN_DIR)

scale: bootstrap ## Search at scale: N synthetic studies (SCALE_SIZES=1000,10000), direct vs gateway
	@SCALE_SIZES=$(or $(SCALE_SIZES),1000,10000,100000) $(PY) scripts/scale.py

lock: ## Re-resolve Python pins into requirements/constraints.txt
	@$(VENV)/bin/pip install -q -r requirements/base.in && \
	 $(VENV)/bin/pip freeze --all --exclude-editable | grep -v "^pip==" > requirements/constraints.txt

.PHONY: help bootstrap up down status logs test lint bench soak scale lock
