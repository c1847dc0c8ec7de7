# slurm-jwt-bridge: `make demo` and `make test` are the two commands a newcomer needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := tests/oidc-provider/node_modules/.installed

.PHONY: demo test unit lint audit format venv system-deps node-deps go-deps bench-go-deps bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools
	$(BIN)/pip install -q --upgrade --upgrade-strategy eager -e '.[test,redis]'
	touch $@

venv: $(STAMP)

# Real daemons for the integration tests (Slurm 22.05, trixie/sid chroots with 24.11/26.05, redis,
# chromium, ...). Needs root; idempotent.
system-deps:
	bash scripts/install-system-deps.sh

$(NODE_STAMP): tests/oidc-provider/package-lock.json
	cd tests/oidc-provider && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node-deps: $(NODE_STAMP)

# The Go programs (examples/go; bench/oauth2-proxy for `make bench`), built with the machine's Go
# from their pinned go.mod/go.sum; modules, build cache and binaries are kept under
# /var/cache/slurm-jwt-bridge/go and rebuilt only when absent (tests/helpers/gobuild.py).
go-deps:
	$(PYTHON) tests/helpers/gobuild.py examples/go

bench-go-deps:
	$(PYTHON) tests/helpers/gobuild.py bench/oauth2-proxy

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The installed packages against PyPI's published advisories (pip-audit; needs https to pypi.org).
audit: venv
	$(BIN)/python scripts/audit-deps.py

# The whole suite, against real Slurm, oidc-provider, Chromium, redis and helm.
test: system-deps venv node-deps go-deps lint audit
	bash scripts/run-tests.sh

# Unit tests only (no daemons, no root).
unit: venv
	bash scripts/run-tests.sh tests/unit

# A one-node Slurm, a local OIDC provider and the bridge (gunicorn) on 127.0.0.1; prints where
# to log in and a copy-paste block that runs a job through the bridge's proxy. Needs root.
demo:
	bash scripts/demo.sh

bench: system-deps venv node-deps bench-go-deps
	$(BIN)/python -m bench

# One short round of every part, written to var/bench/quick.md (checks the harness; its figures
# are not for docs/BENCHMARKS.md).
bench-quick: system-deps venv node-deps bench-go-deps
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) tests/oidc-provider/node_modules var test-artifacts .pytest_cache
