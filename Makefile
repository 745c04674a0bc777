# make run   — install, migrate, and run web + worker + clock against the local Postgres and Redis
# make test  — install and run the test suite (real Postgres and Redis; installs pgbouncer and chromium)
# make check — alert rules (installs promtool), format check, lint, types, then the tests (what CI runs)
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3

# $(call debian,COMMAND,PACKAGE): install Debian's PACKAGE unless COMMAND is already there (on the
# PATH or in /usr/sbin, where pgbouncer lives), as .ci/services-up installs Postgres and Redis.
debian = command -v $(1) >/dev/null || [ -x /usr/sbin/$(1) ] || (apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) >/dev/null)

BENCHES := audit console payouts renew settle sweeps worker

.PHONY: install services run test lint check bench $(BENCHES:%=bench-%)

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

# pgbouncer: tests/test_pgbouncer.py runs the receiver, a worker and migrate through it; chromium:
# the console's browser tests drive it through Playwright (nothing is downloaded at run time).
test: install services
	$(call debian,pgbouncer,pgbouncer)
	$(call debian,chromium,chromium)
	$(BIN)/pytest

# promtool (Debian's prometheus package) checks the alert rules ops/ ships.
lint: install
	$(call debian,promtool,prometheus)
	promtool check rules ops/alerts.yml
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

check: lint test

bench: install services
	$(call debian,wrk,wrk)
	$(BIN)/python bench/receiver

# bench-NAME runs bench/NAME; the sweeps' benchmark drives the receiver with wrk, as `make bench` does.
$(BENCHES:%=bench-%): bench-%: install services
	$(if $(filter sweeps,$*),$(call debian,wrk,wrk))
	$(BIN)/python bench/$*
