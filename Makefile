# Two commands get a newcomer going: `make serve` and `make test`. Everything they need installs here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# `make demo` serves the README's models from the repository's fake providers (tests/fakes/demo.py): no key needed.
.PHONY: serve demo test test-lambda-runtime lint typecheck unit bench tools claude-code clients clean sam-check

# The pip that venv bundles installs everything here; upgrading it first cost a download and a warning.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# `make serve` needs only the runtime; `make test` adds the test extras (SDKs, moto, linters) on top.
RUNTIME := $(VENV)/.runtime

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $(RUNTIME)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP) $(RUNTIME)

# Options for `gateway serve`: make serve ARGS='--port 8081 --config my.yaml'; `make demo` takes `--port` and
# `--folder`: make demo ARGS='--port 8081'
ARGS ?=

serve: $(RUNTIME)
	$(BIN)/gateway serve $(ARGS)

demo: $(RUNTIME)
	$(BIN)/python -m tests.fakes.demo $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check handler adapters tests
	$(BIN)/ruff format --check handler adapters tests
	$(BIN)/mypy

# Debian packages the tests drive: nginx and wrk (the benchmark's smoke run), chromium (the dashboard test),
# prometheus (tests/functional/test_prometheus_scrape.py runs the binary itself; its system service is not used),
# valgrind (the benchmark counts the cold start's instructions with its callgrind).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
tools:
	@missing=""; \
	[ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/bin/prometheus ] || missing="$$missing prometheus"; \
	command -v valgrind >/dev/null || missing="$$missing valgrind"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

# Claude Code, the real CLI tests/functional/test_claude_code.py drives through the gateway, at a pinned version.
# npm holds back the package's install script, which puts the platform's native binary in place: run it here.
CLAUDE_CODE_VERSION := 2.1.332
CLAUDE_CODE_DIR     := .tools/claude
CLAUDE_CODE_STAMP   := $(CLAUDE_CODE_DIR)/.installed-$(CLAUDE_CODE_VERSION)

$(CLAUDE_CODE_STAMP):
	npm install --prefix $(CLAUDE_CODE_DIR) --no-audit --no-fund --loglevel=error @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION)
	cd $(CLAUDE_CODE_DIR)/node_modules/@anthropic-ai/claude-code && node install.cjs
	touch $@

claude-code: $(CLAUDE_CODE_STAMP)

# Codex CLI, the coding agent tests/functional/responses/test_codex_cli.py drives through the gateway, pinned.
# (the test runs `.tools/node_modules/.bin/codex`.)
CODEX_VERSION := 0.171.0
CODEX_STAMP := .tools/.codex-$(CODEX_VERSION)
$(CODEX_STAMP):
	npm install --prefix .tools --no-save --no-audit --no-fund @openai/codex@$(CODEX_VERSION)
	touch $@

clients: $(CODEX_STAMP)

test: $(STAMP) tools claude-code clients lint
	$(BIN)/pytest -q -p no:cacheprovider
	$(MAKE) --no-print-directory test-lambda-runtime

# Lambda runs the gateway on Python 3.13 (template.yaml's Runtime), the suite above on .venv's Python: the unit tests
# and the Lambda handler's (every events/*.json replayed, the invocation's deadline) run again on 3.13, in a venv of
# their own. Its interpreter: PYTHON313, else the first python3.13 on PATH or under pyenv that actually runs.
LAMBDA_PYTHON_VERSION := 3.13
LAMBDA_VENV  := .venv-py$(subst .,,$(LAMBDA_PYTHON_VERSION))
LAMBDA_STAMP := $(LAMBDA_VENV)/.installed
LAMBDA_TESTS := tests/unit tests/functional/test_lambda_events.py tests/functional/test_lambda_deadline.py
PYTHON313 ?= $(shell for p in python$(LAMBDA_PYTHON_VERSION) \
	$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)/versions/$(LAMBDA_PYTHON_VERSION)*/bin/python$(LAMBDA_PYTHON_VERSION); \
	do "$$p" -c "" 2>/dev/null && { echo "$$p"; break; }; done)

$(LAMBDA_STAMP): pyproject.toml
	@test -n "$(PYTHON313)" || { \
		echo "make test-lambda-runtime: no Python $(LAMBDA_PYTHON_VERSION) found (Lambda's runtime; none on PATH or" \
			"under pyenv). Install it (pyenv install $(LAMBDA_PYTHON_VERSION), or your system's python$(LAMBDA_PYTHON_VERSION)" \
			"package) or name one: make test PYTHON313=/path/to/python$(LAMBDA_PYTHON_VERSION)" >&2; exit 2; }
	$(PYTHON313) -m venv $(LAMBDA_VENV)
	$(LAMBDA_VENV)/bin/pip install -q -e '.[test]'
	touch $@

test-lambda-runtime: $(LAMBDA_STAMP)
	$(LAMBDA_VENV)/bin/pytest -q -p no:cacheprovider $(LAMBDA_TESTS)

# The full benchmark (a few minutes): the gateway against nginx directly, wrk at 1, 8 and 64 connections.
bench: $(STAMP) tools
	$(BIN)/python -m tests.bench.run --json .bench.json

clean:
	rm -rf $(VENV) $(LAMBDA_VENV) .tools .gateway .pytest_cache .mypy_cache .ruff_cache

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
