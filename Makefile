# EdgeFleet developer entry points. `make test` and `make demo` set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .demo
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: help venv system-deps lint test demo bench chaos audit clean

help:
	@echo "make demo   set up, then broker, control plane and an agent serving a signed model (Ctrl-C stops)"
	@echo "make test   set up, then ruff, mypy --strict and pytest"
	@echo "make chaos  faults, overload, soak and fuzzing against real processes; writes docs/reliability.md"
	@echo "make audit  pip-audit of the installed packages (needs pypi.org or api.osv.dev)"
	@echo "make bench  every benchmark (serving, bundles, reporting, dashboard, fleet, batch); writes docs/benchmarks.md"

# The virtual environment, with the project (all extras) and the dev tools.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests and the demo need: Mosquitto (the tests start their own broker),
# PostgreSQL (the control plane's tests start their own server from /usr/lib/postgresql/<ver>/bin),
# systemd and shellcheck (the deployment tests).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
system-deps:
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || \
		($(SUDO) apt-get update && \
		 $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto mosquitto-clients)
	@command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || \
		($(SUDO) apt-get update && \
		 $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql)
	@# systemd-analyze verifies the units in deploy/systemd; shellcheck checks install-agent.sh.
	@command -v systemd-analyze >/dev/null && command -v shellcheck >/dev/null || \
		($(SUDO) apt-get update && \
		 $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y systemd shellcheck)
	@# Chromium: the dashboard's browser tests drive it through Playwright (from the venv).
	@test -x /usr/bin/chromium || \
		($(SUDO) apt-get update && \
		 $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: system-deps lint
	$(BIN)/pytest -q

# `edgefleet demo`: keys, broker, control plane, one enrolled agent, the sample model rolled out
# and answering. Ports: make demo CP_PORT=8081 AGENT_PORT=8001 MQTT_PORT=1884 (HOST, DEMO_DIR too).
CP_PORT ?= 8080
AGENT_PORT ?= $(PORT)
MQTT_PORT ?= 1883
demo: system-deps venv
	$(BIN)/edgefleet demo --dir $(DEMO_DIR) --host $(HOST) \
		--cp-port $(CP_PORT) --agent-port $(AGENT_PORT) --mqtt-port $(MQTT_PORT)

# Every benchmark, one after the other, into one report with a summary of every target
# (about 25 minutes on 2 vCPUs; BENCH_ARGS=--quick for a smoke run, --only NAME for one).
BENCH_ARGS ?=
bench: system-deps venv
	$(BIN)/python -m bench $(BENCH_ARGS)

# The chaos suite (about 50 minutes; CHAOS_ARGS=--quick for the few-minute setting of make test).
CHAOS_ARGS ?=
chaos: system-deps venv
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

# pip-audit of the virtual environment; fails, saying so, when its database is out of reach.
audit: venv
	.ci/audit

clean:
	rm -rf $(VENV) $(DEMO_DIR) .mypy_cache .ruff_cache .pytest_cache
