# kassa: `make run` serves on 127.0.0.1:50051, `make test` runs the whole suite.
# Both do the whole set-up on a fresh machine with Python 3.11+ and a C compiler.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config/kassa.toml
INSTALLED := $(VENV)/.installed
DEV_INSTALLED := $(VENV)/.installed-dev
BUILT := $(VENV)/.built
CORE_SOURCES := $(shell find core_ext server -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi')
PROTO_SOURCES := $(wildcard proto/kassa/v1/*.proto)

.PHONY: run test build bench loadtest verify clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "kassa needs Python 3.11+; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The server's own needs: runtime and build requirements (make run).
$(INSTALLED): $(BIN)/python requirements.txt requirements-build.txt
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-build.txt
	touch $@

# Tests, benchmarks and the load test add their tools (make test, bench, loadtest).
$(DEV_INSTALLED): $(INSTALLED) requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

$(BUILT): $(INSTALLED) setup.py pyproject.toml $(CORE_SOURCES) $(PROTO_SOURCES)
	$(BIN)/python setup.py --quiet build_proto build_ext --inplace
	$(BIN)/pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

build: $(BUILT)

run: $(BUILT)
	$(BIN)/kassa serve --config $(CONFIG)

test: $(BUILT) $(DEV_INSTALLED)
	$(BIN)/python -m pytest tests

bench: $(BUILT) $(DEV_INSTALLED)
	$(BIN)/python -m bench.run_all

HOST ?= 127.0.0.1:50051
loadtest: $(BUILT) $(DEV_INSTALLED)  # against a running server: make run, then make loadtest [HOST=host:port]
	$(BIN)/locust -f loadtest/locustfile.py --headless --users 16 --spawn-rate 16 --run-time 30s \
		--host $(HOST) --html bench/results/locust.html --csv bench/results/locust

verify: $(BUILT)
	$(BIN)/kassa verify --config $(CONFIG)

clean:
	rm -rf $(VENV) build dist kassa *.egg-info
	find core_ext server \( -name '*.c' -o -name '*.so' -o -name '*.html' \) -delete
