# EdgeFleet developer entry points. `make test` and `make demo` set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .demo
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: help venv system-deps lint test demo bench clean

help:
	@echo "make demo   set up, write the sample models and serve them on http://$(HOST):$(PORT)"
	@echo "make test   set up, then ruff, mypy --strict and pytest"
	@echo "make bench  serving, bundle and reporting benchmarks; write docs/benchmarks.md"

# The virtual environment, with the project (all extras) and the dev tools.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --editable '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests and the demo need: Mosquitto (the tests start their own broker) and
# PostgreSQL (the control plane's tests start their own server from /usr/lib/postgresql/<ver>/bin).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
system-deps:
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || \
		($(SUDO) apt-get update && \
		 $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto mosquitto-clients)
	@command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || \
		($(SUDO) apt-get update && \
		 $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: system-deps lint
	$(BIN)/pytest -q

demo: system-deps venv
	$(BIN)/edgefleet sample-models $(DEMO_DIR)/models
	@echo
	@echo "Serving on http://$(HOST):$(PORT)/v2 (Ctrl-C stops). Try, in another terminal:"
	@echo "  curl -s http://$(HOST):$(PORT)/v2/models/mlp/config | python3 -m json.tool"
	@echo "  $(BIN)/python examples/infer_mlp.py --url $(HOST):$(PORT)"
	@echo
	$(BIN)/edgefleet agent serve --host $(HOST) --port $(PORT) --state-dir $(DEMO_DIR)/state \
		--model mlp=$(DEMO_DIR)/models/mlp.onnx,$(DEMO_DIR)/models/mlp.xml,$(DEMO_DIR)/models/mlp.tflite \
		--model cnn=$(DEMO_DIR)/models/cnn.onnx,$(DEMO_DIR)/models/cnn.xml,$(DEMO_DIR)/models/cnn.tflite

bench: venv
	$(BIN)/python -m bench.serving
	$(BIN)/python -m bench.bundles
	$(BIN)/python -m bench.reporting

clean:
	rm -rf $(VENV) $(DEMO_DIR) .mypy_cache .ruff_cache .pytest_cache
