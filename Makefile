# make run   — install, migrate, and run web + worker + clock against the local Postgres and Redis
# make test  — install and run the test suite (real Postgres and Redis)
# make check — format check, lint, types, then the tests (what CI runs)
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: install services browser run test lint check bench bench-console bench-renew bench-sweeps bench-worker

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

services:
	bash .ci/services-up

run: install services
	$(BIN)/veza-worker migrate
	PATH="$(abspath $(BIN)):$$PATH" \
	HYPERSWITCH_WEBHOOK_SECRET="$${HYPERSWITCH_WEBHOOK_SECRET:-dev_webhook_secret}" \
	$(BIN)/honcho start -f Procfile -p "$${PORT:-8000}" web worker clock

# The console's browser tests drive Debian's chromium through Playwright (nothing downloaded at run time).
browser:
	[ -x /usr/bin/chromium ] || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium)

test: install services browser
	$(BIN)/pytest

lint: install
	if command -v promtool >/dev/null; then promtool check rules ops/alerts.yml; \
	else echo "promtool not installed (apt-get install prometheus): ops/alerts.yml not checked"; fi
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

check: lint test

bench: install services
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/receiver

bench-console: install services
	$(BIN)/python bench/console

bench-renew: install services
	$(BIN)/python bench/renew

bench-sweeps: install services
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk)
	$(BIN)/python bench/sweeps

bench-worker: install services
	$(BIN)/python bench/worker
