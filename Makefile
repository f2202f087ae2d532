# Two commands get a newcomer going: `make serve` and `make test`. Everything they need installs here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test lint typecheck unit bench clean sam-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/gateway serve

lint: $(STAMP)
	$(BIN)/ruff check handler adapters tests
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .gateway .pytest_cache .mypy_cache .ruff_cache

# The AWS SAM CLI in its own venv (its pins clash with the test extras): `sam validate --lint` and `sam build`
# (infra/Makefile: arm64 wheels for the runtime's Python, from PyPI). tests/unit/test_template.py then also runs
# `sam validate --lint`. Nothing here needs an AWS account.
SAM_VENV := .venv-sam
SAM_ENV  := SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=us-east-1 PATH="$(CURDIR)/$(SAM_VENV)/bin:$$PATH"

$(SAM_VENV)/bin/sam:
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install -q --upgrade pip
	$(SAM_VENV)/bin/pip install -q aws-sam-cli

sam-check: $(SAM_VENV)/bin/sam
	$(SAM_ENV) sam validate --lint
	$(SAM_ENV) sam build
