# memberflow — the two commands of the README, and a few helpers. `make help` lists them.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help demo test test-quick recover sandbox dev prod bench bench-extract clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]" -c constraints.txt
	touch $(STAMP)

demo: $(STAMP) ## set up, start the sandbox, run the demo integrations once, print a summary
	$(BIN)/memberflow demo

test: $(STAMP) browser services ## set up, lint, and run every test (unit + end-to-end against the sandbox)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n 2 --dist worksteal  # two workers; each test has its own sandbox, instance and data dir (tests that only read one import's result share it), temp files in /dev/shm

.PHONY: browser services
services: ## PostgreSQL and RabbitMQ for the production-profile tests (started if stopped; required under CI)
	bash scripts/ensure_services.sh || [ -z "$$CI" ]

browser: ## Debian's chromium for the browser test (installed with apt-get when root; else says so)
	sh scripts/ensure_chromium.sh

test-quick: $(STAMP) ## every test except the slow fault-injection and kill -9 runs (CI runs all)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not slow"

recover: $(STAMP) ## fail runs whose process died, free their pool slots, remove orphan temp files
	$(BIN)/memberflow recover

sandbox: $(STAMP) ## serve the vendor emulators on :8765 until Ctrl-C
	$(BIN)/memberflow sandbox

dev: $(STAMP) ## the sandbox and the Dagster UI (http://127.0.0.1:3000), sharing data/ and .dagster_home/ with the demo
	$(BIN)/memberflow ui

# The production profile's settings; override any of them in the environment.
MEMBERFLOW_POSTGRES_URL  ?= postgresql+psycopg2://$(shell id -un)@127.0.0.1:5432/memberflow
MEMBERFLOW_CELERY_BROKER ?= pyamqp://guest:guest@127.0.0.1:5672//
export MEMBERFLOW_POSTGRES_URL MEMBERFLOW_CELERY_BROKER

prod: $(STAMP) ## production profile here: PostgreSQL, daemon, UI, 2 Celery workers, demo imports
	bash scripts/ensure_services.sh
	$(BIN)/python scripts/create_database.py
	$(BIN)/memberflow deploy --profile production --demo

bench: $(STAMP) ## the 100,000-customer full-sync benchmark (minutes)
	$(BIN)/python bench/full_sync.py --customers 100000

bench-extract: $(STAMP) ## customers extract vs its bare-httpx ceiling and dlt, 100,000 customers
	$(BIN)/python bench/extract_peers.py --customers 100000 --rounds 3

clean: ## remove the environment, data and Dagster home
	rm -rf $(VENV) data .dagster_home .dagster_home_production bench/out test-artifacts
