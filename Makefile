# callcancel: every target does its own setup. `make demo` and `make test` work on a fresh clone.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV    := .venv
BIN     := $(VENV)/bin
LOCK    := layers/callcancel/requirements.txt
STAMP   := $(VENV)/.installed
# checkov pins boto3, urllib3 and networkx older than ours: it lives in a venv of its own, from the
# pyproject.toml dependency group `checkov`.
CHECKOV_VENV := $(VENV)/checkov
# The venv's bin goes first on PATH so that `sam build` finds python3.13 there.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export SAM_CLI_TELEMETRY := 0

# Python 3.13 is the Lambda runtime we target. A pyenv shim is on PATH even when it cannot run,
# so each candidate is asked for its version.
PYTHON313 ?= $(shell for p in python3.13 $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.13*/bin/python3.13; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1 && { command -v "$$p"; break; }; done)

.PHONY: help install lock lint test test-fast build bench demo soak local clean

help:
	@echo "make demo     run the whole job locally (embedded AWS, provider simulator), print a summary"
	@echo "make soak     the whole job under provider faults, AWS faults and worker crashes (SOAK_N=2000)"
	@echo "make local    start the local stack and keep it running, for exploring"
	@echo "make test     lint (ruff, mypy, cfn-lint with serverless rules, checkov), unit, integration, template, e2e tests"
	@echo "make bench    concurrency and memory benchmark"
	@echo "make install  create .venv with the package and the dev tools (aws-sam-cli included)"
	@echo "make build    sam validate --lint && sam build"
	@echo "make lock     re-pin the runtime closure into $(LOCK) after changing pyproject.toml"

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	@if [ -z "$(PYTHON313)" ]; then \
		echo "error: Python 3.13 not found (the Lambda runtime is python3.13)." >&2; \
		echo "       install it with 'pyenv install 3.13' or your package manager, or pass PYTHON313=/path/to/python3.13" >&2; \
		exit 1; fi
	@[ -x $(BIN)/python3.13 ] || $(PYTHON313) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev]'
	@[ -x $(CHECKOV_VENV)/bin/python ] || $(BIN)/uv venv --quiet --python $(BIN)/python $(CHECKOV_VENV)
	$(BIN)/uv pip install --quiet --python $(CHECKOV_VENV)/bin/python --group pyproject.toml:checkov
	@touch $@

lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --python-version 3.13 --python-platform aarch64-manylinux_2_28 \
		--no-annotate --no-header --quiet -o $(LOCK)

# The template's security checks: cfn-lint with the AWS serverless rules, and checkov. Findings that do not
# fit this stack are skipped in the resource's Metadata, each with its reason (README, Security checks).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/cfn-lint template.yaml --append-rules cfn_lint_serverless.rules
	$(CHECKOV_VENV)/bin/checkov --file template.yaml --framework cloudformation --skip-download --compact --quiet

test: lint
	$(BIN)/pytest -n 2 --dist loadgroup

test-fast: $(STAMP)
	$(BIN)/pytest -m "not template and not e2e"

build: $(STAMP)
	sam validate --lint
	sam build

demo: $(STAMP)
	@$(BIN)/python -W ignore -m callcancel_local.demo

soak: $(STAMP)
	@$(BIN)/python -W ignore -m callcancel_local.soak

local: $(STAMP)
	@$(BIN)/python -W ignore -m callcancel_local.serve

bench: $(STAMP)
	$(BIN)/python -m callcancel_local.bench

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache
