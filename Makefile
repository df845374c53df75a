# Roost — the two commands a newcomer needs:
#   make run    set up this machine, start broker + services + hub + simulator
#   make test   set up this machine, lint, run unit and integration tests
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: help images setup setup-ha run test unit integration lint proto proto-check buf-lint bench chaos soak models constraints clean k3s-check bench-fleet

help:
	@echo "make run | test | lint | proto | proto-check | bench | bench-fleet | chaos | soak | models | clean"

setup:
	@./scripts/setup.sh

# A real Home Assistant core in its own Python 3.13 venv (cached in ~/.cache/roost),
# for the integration tests.
setup-ha:
	@./scripts/setup-ha.sh

run: setup
	$(BIN)/roost run

test: setup setup-ha lint
	$(BIN)/pytest -q $(PYTEST_ARGS) tests

unit: setup
	$(BIN)/pytest -q $(PYTEST_ARGS) tests/unit

integration: setup setup-ha
	$(BIN)/pytest -q $(PYTEST_ARGS) tests/integration

lint: setup proto-check buf-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy services hub cli models bench fleet
	$(BIN)/lint-imports --no-cache

# Before `kubectl apply -k`: refuses an overlay whose images are not all pinned by a
# real digest (docs/deploy.md, "Image digests"), or whose audit witnesses
# (components/witness-egress) are still placeholders or not exactly reachable.
# OVERLAY=k3s/overlays/edge by default.
OVERLAY ?= k3s/overlays/edge
k3s-check: setup
	PYTHONPATH=.:protos $(PY) -m tests.support.k3s $(OVERLAY)

proto: setup
	./scripts/gen-protos.sh

# Regenerate into a temp dir and fail on any difference with the committed code.
proto-check: setup
	@tmp=$$(mktemp -d) && ./scripts/gen-protos.sh $$tmp >/dev/null 2>&1 && \
	  diff -r --exclude='*.proto' --exclude='__pycache__' $$tmp/roost protos/roost >/dev/null \
	  || { echo "generated protobuf code is out of date: run 'make proto' and commit"; rm -rf $$tmp; exit 1; }; \
	  rm -rf $$tmp; echo "proto-check: generated code is up to date"

buf-lint:
	@if [ -x node_modules/.bin/buf ]; then node_modules/.bin/buf lint && echo "buf lint: ok"; \
	  else echo "buf lint: skipped (npm not available)"; fi

bench: setup
	$(PY) -m bench.models
	$(PY) -m bench.e2e
	$(PY) -m bench.audit
	$(PY) -m bench.update
	$(PY) -m bench.personalization
	$(PY) -m bench.providers
	$(PY) -m bench.privacy_audit
	$(MAKE) bench-fleet

# Issue 16's scale bench: a real SuperLink and 50 real SuperNodes on this machine, 3 rounds
# with and without SecAgg+ (bench/results/fleet.{json,md}); `make bench` runs it last.
# One bench SuperExec forks their ClientApp tasks from a preloaded server (docs/fleet.md,
# "Scale"); the 50 SuperNodes idle at ~7 GiB. About 8 minutes; run it on a quiet machine.
FLEET_ARGS ?=
bench-fleet: setup
	$(PY) -m bench.fleet $(FLEET_ARGS)

# Issue 13's soak: a real stack, 10 minutes at 300 readings/s; RSS flat, fewer than 100 log lines.
soak: setup
	$(PY) -m bench.soak

# Kill each process by PID under 300 readings/s, restart it, check the invariants and
# measure readings lost and the time to decide again: bench/results/chaos.{json,md,png}.
# About 12 minutes; `make chaos CHAOS_ARGS=--quick` takes about 6 (on 2 shared cores).
CHAOS_ARGS ?=
chaos: setup
	$(PY) -m bench.chaos $(CHAOS_ARGS)

# Retrain every shipped model from ../shared/data (needs torch: the 'train' extra).
models: setup
	$(BIN)/pip install -q -c constraints.txt -e '.[train]'
	@for task in $$($(PY) -c 'from models.tasks import available; print(*available())'); do \
	  echo "== $$task"; $(BIN)/roost models train $$task || exit 1; done

constraints:
	{ echo '# Known-good versions (Python 3.11), used as pip constraints by scripts/setup.sh.'; \
	  echo '# Regenerate with: make constraints'; \
	  $(BIN)/pip freeze --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu/torch==\1/' \
	  | grep -viE '^(nvidia|triton|setuptools|pip)'; } > constraints.txt

# Container images per role (needs docker, podman or buildah; explains otherwise).
images:
	./scripts/images.sh

clean:
	rm -rf var build .mypy_cache .ruff_cache .pytest_cache
