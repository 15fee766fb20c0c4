# memberflow — the two commands of the README, and a few helpers. `make help` lists them.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help demo test lint sandbox dev bench clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP) ## set up, start the sandbox, run the demo integrations once, print a summary
	$(BIN)/memberflow demo

test: $(STAMP) ## set up, lint, and run every test (unit + end-to-end against the sandbox)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

sandbox: $(STAMP) ## serve the vendor emulators on :8765 until Ctrl-C
	$(BIN)/memberflow sandbox

dev: $(STAMP) ## Dagster UI on :3000 over the integrations (run `make sandbox` beside it)
	mkdir -p .dagster_home && cp -n dagster.yaml .dagster_home/dagster.yaml || true
	DAGSTER_HOME=$(CURDIR)/.dagster_home $(BIN)/dagster dev -w workspace.yaml

bench: $(STAMP) ## the 100,000-customer full-sync benchmark (minutes)
	$(BIN)/python bench/full_sync.py --customers 100000

clean: ## remove the environment, data and Dagster home
	rm -rf $(VENV) data .dagster_home bench/out
