# slurm-jwt-bridge: `make demo` and `make test` are the two commands a newcomer needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every Python dependency (with the test and redis extras) pinned with hashes, and the subset a
# site installs (the service with redis, the same versions); `make lock` refreshes both.
LOCK := requirements.lock
DEPLOY_LOCK := requirements-deploy.lock
LOCK_VENV ?= .venv-lock
UV_VERSION ?= 0.13.8
# `make lock LOCK_FLAGS=` keeps the current pins where pyproject.toml still allows them.
LOCK_FLAGS ?= --upgrade
NODE_STAMP := tests/oidc-provider/node_modules/.installed

.PHONY: demo test unit lint audit format venv lock system-deps node-deps go-deps bench-go-deps bench bench-quick clean

# The venv gets exactly the versions of $(LOCK) (hash-checked), then the project itself.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools
	$(BIN)/pip install -q --require-hashes -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	touch $@

venv: $(STAMP)

# Resolve pyproject.toml's dependencies (extras test and redis, every platform, Python 3.11 and
# later) anew into $(LOCK), with hashes, then $(DEPLOY_LOCK) within it; uv runs from its own
# venv, $(LOCK_VENV).
UV_COMPILE = $(LOCK_VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.11 \
	--generate-hashes --quiet --custom-compile-command 'make lock'

lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q uv==$(UV_VERSION)
	$(UV_COMPILE) --extra test --extra redis $(LOCK_FLAGS) --output-file $(LOCK)
	$(UV_COMPILE) --extra redis --constraint $(LOCK) --output-file $(DEPLOY_LOCK)

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
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The installed packages against PyPI's published advisories (pip-audit; needs https to PyPI).
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
	rm -rf $(VENV) $(LOCK_VENV) tests/oidc-provider/node_modules var test-artifacts .pytest_cache
